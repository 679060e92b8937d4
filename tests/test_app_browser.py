"""The `pconv app` page in a real headless Chromium (Debian's chromium, driven by Playwright's Python package).

Two models side by side (the bundled model on torch, the small test model on ONNX Runtime): an example
photo is loaded, strokes are painted with the mouse (with undo and the eraser), Inpaint is pressed, and
each downloaded result is checked against the input (known pixels) and `pconv infer` on the same photo
and the mask the page painted (downloaded from the page). A non-image upload must show its message.

Skips, saying why, without the browser or the driver: `apt-get install chromium` (.ci/run does) and the
dev extra (playwright; never `playwright install`, which downloads browsers). Set
PCONV_UPDATE_SCREENSHOT=1 to write the screenshot to docs/app-screenshot.png (the docs show it).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.app_helpers import AppProcess, decode, pconv_infer, post
from PIL import Image

pytest.importorskip("fastapi", reason="the app extra is not installed (pip install 'pconv-deploy[app]')")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PCONV_CHROMIUM", "/usr/bin/chromium")
EXAMPLE = "chelsea.jpg"
BUNDLED = ROOT / "pconv_deploy" / "assets" / "pconv-demo.safetensors"
TIMEOUT_MS = 60_000
DROP_FILE = """([name, text]) => {
  const data = new DataTransfer();
  data.items.add(new File([text], name));
  document.getElementById("stage").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as e:  # the driver and this chromium do not get along: say so, do not fail
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def two_models(small_onnx, tmp_path_factory):
    cwd, tmpdir = tmp_path_factory.mktemp("browser-cwd"), tmp_path_factory.mktemp("browser-tmp")
    running = AppProcess(["--model", str(BUNDLED), "--model", str(small_onnx)], cwd, tmpdir)
    yield running
    err = running.stop()
    assert "Traceback" not in err, err


def stroke(page, box, points) -> None:
    """One brush stroke through ``points`` (fractions of the canvas), as a user drags the mouse."""
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def download(page, click) -> bytes:
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        click()
    return Path(info.value.path()).read_bytes()


def paint_a_mask(page) -> None:
    """Two strokes, one undone, a third, and the eraser across part of the first."""
    box = page.locator("#mask-canvas").bounding_box()
    page.fill("#brush-size", "30")
    stroke(page, box, [(0.15, 0.2), (0.3, 0.35), (0.45, 0.3)])
    stroke(page, box, [(0.8, 0.8), (0.9, 0.9)])
    page.click("#undo")
    stroke(page, box, [(0.6, 0.55), (0.62, 0.75), (0.7, 0.8)])
    page.click("#tool-eraser")
    stroke(page, box, [(0.3, 0.1), (0.3, 0.5)])
    page.click("#tool-brush")


def test_paint_inpaint_download_compare_two_models(browser, two_models, small_onnx, tmp_path):
    page = browser.new_page(viewport={"width": 1360, "height": 980}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(two_models.url)
    page.wait_for_selector(f"#examples option[value='{EXAMPLE}']", state="attached")
    page.select_option("#examples", EXAMPLE)
    page.wait_for_selector("#mask-canvas[data-ready='1']", state="attached")
    paint_a_mask(page)

    photo_file = ROOT / "examples" / "images" / EXAMPLE
    mask_file = tmp_path / "chelsea.png"  # the mask the page painted, as it sends it
    mask_file.write_bytes(download(page, lambda: page.click("#mask-download")))
    rgba = np.asarray(Image.open(mask_file).convert("RGBA"))  # Chromium writes RGBA PNGs
    assert (rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 0] == rgba[..., 2]).all()
    mask = rgba[..., 0]
    assert set(np.unique(mask)) == {0, 255} and mask.shape == (300, 451)
    hole = mask == 255
    assert 0.02 < hole.mean() < 0.3
    assert not hole[int(0.85 * 300), int(0.85 * 451)]  # the undone stroke left no paint
    assert not hole[int(0.275 * 300), int(0.3 * 451)]  # the eraser went through the first stroke

    page.click("#inpaint")
    page.wait_for_selector("#message.info:has-text('done')")
    cards = page.locator(".result")
    assert cards.count() == 2
    photo = np.asarray(Image.open(photo_file))
    results = []
    for i, model in enumerate((BUNDLED, small_onnx)):
        card = cards.nth(i)
        assert card.get_attribute("data-model") == model.name
        out = np.asarray(Image.open(io.BytesIO(download(page, card.locator("a.download").click))))
        assert np.array_equal(out[~hole], photo[~hole])  # known pixels: byte-identical
        fields = {"image": (EXAMPLE, photo_file.read_bytes()), "mask": ("m.png", mask_file.read_bytes())}
        status, _, direct = post(f"{two_models.url}/api/inpaint", {**fields, "model": model.name})
        assert status == 200 and np.array_equal(decode(direct), out)  # the page sent the mask it let us download
        reference = pconv_infer(photo_file, mask_file, model, tmp_path / f"ref{i}")
        assert np.array_equal(out[hole], reference[hole])
        results.append(out.astype(np.int64))
    shown = float(cards.nth(1).locator(".stats").get_attribute("data-mad"))
    assert shown == pytest.approx(np.abs(results[1] - results[0])[hole].mean(), abs=1e-4)
    assert cards.nth(1).locator(".heat canvas").count() == 1
    save_screenshot(page, tmp_path)

    (tmp_path / "notes.txt").write_text("not a photo\n")
    page.set_input_files("#photo-file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#message.error:has-text(\"photo 'notes.txt' is not an image\")")
    assert page.locator(".result").count() == 2  # the last results stay; the page still works
    page.evaluate(DROP_FILE, ["dropped.bin", "\x00\x01 not an image either"])
    page.wait_for_selector("#message.error:has-text(\"photo 'dropped.bin' is not an image\")")
    page.close()


def save_screenshot(page, tmp_path: Path) -> None:
    page.locator("#results").scroll_into_view_if_needed()
    shot = tmp_path / "app-screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("PCONV_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "app-screenshot.png")
