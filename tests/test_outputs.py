"""Output formats of the folder job: lossless PNG at a fast level by default, JPEG/WebP, `same`, ICC kept.

Real files through the real small ONNX model; formats are checked by decoding (and, for the PNG
level, by the zlib header that the encoder writes).
"""

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime import Inpainter, InpaintOptions, load_backend
from pconv_deploy.runtime.outputs import OutputSettings, output_name
from pconv_deploy.runtime.pipeline import FolderOptions, run_folder


def job(images, masks, output, encoding: OutputSettings | None = None) -> FolderOptions:
    return FolderOptions(images=images, masks=masks, output=output, encoding=encoding or OutputSettings())


@pytest.fixture(scope="module")
def inpainter(small_onnx):
    return Inpainter(load_backend(small_onnx), InpaintOptions(batch_size=2))


@pytest.fixture()
def folder(tmp_path):
    """A JPEG, a PNG with an sRGB ICC profile and a WebP, one shared mask."""
    images = tmp_path / "images"
    images.mkdir()
    photo = skimage.data.chelsea()  # 300 x 451
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo).save(images / "cat.jpg", quality=92)
    Image.fromarray(photo[:, ::-1]).save(images / "tac.png", icc_profile=icc)
    Image.fromarray(photo[::-1]).save(images / "upside.webp", lossless=True)
    hole = np.zeros(photo.shape[:2], bool)
    hole[100:160, 200:300] = True
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return images, tmp_path / "mask.png", hole, icc


def decoded(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), im.format, im.info.get("icc_profile")


def png_zlib_level(path) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 fastest (level 0-1), 1 fast, 2 default (6), 3 maximum."""
    data = path.read_bytes()
    start = data.index(b"IDAT") + 4
    return data[start + 1] >> 6


def test_default_png_is_lossless_and_fast(inpainter, folder, tmp_path):
    images, mask, hole, icc = folder
    report = run_folder(inpainter, job(images, mask, tmp_path / "out"), progress=False)
    assert report.count("ok") == 3 and report.output_format == "png"
    for source, name in (("cat.jpg", "cat.png"), ("tac.png", "tac.png"), ("upside.webp", "upside.png")):
        result, fmt, profile = decoded(tmp_path / "out" / name)
        original, _, _ = decoded(images / source)
        assert fmt == "PNG" and np.array_equal(result[~hole], original[~hole]), name
        assert png_zlib_level(tmp_path / "out" / name) == 1  # compress level 2
    assert decoded(tmp_path / "out" / "tac.png")[2] == icc  # the ICC profile travels with the pixels
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.png", "tac.png", "upside.png"]


def test_png_level_is_applied(inpainter, folder, tmp_path):
    images, mask, _, _ = folder
    run_folder(inpainter, job(images, mask, tmp_path / "out", OutputSettings(png_level=9)), progress=False)
    assert png_zlib_level(tmp_path / "out" / "cat.png") == 3


@pytest.mark.parametrize("fmt", ["jpg", "webp", "same"])
def test_lossy_and_same_formats(inpainter, folder, tmp_path, fmt):
    images, mask, hole, icc = folder
    out = tmp_path / "out"
    report = run_folder(inpainter, job(images, mask, out, OutputSettings(fmt, 90)), progress=False)
    assert report.count("ok") == 3, [f.error for f in report.files]
    expected = {
        "jpg": {"cat.jpg": "JPEG", "tac.jpg": "JPEG", "upside.jpg": "JPEG"},
        "webp": {"cat.webp": "WEBP", "tac.webp": "WEBP", "upside.webp": "WEBP"},
        "same": {"cat.jpg": "JPEG", "tac.png": "PNG", "upside.webp": "WEBP"},
    }[fmt]
    assert {p.name for p in out.iterdir()} == set(expected)
    for (name, pil_format), source in zip(sorted(expected.items()), sorted(p.name for p in images.iterdir())):
        result, got, profile = decoded(out / name)
        original, _, _ = decoded(images / source)
        assert got == pil_format, name
        known = np.abs(result.astype(int) - original.astype(int))[~hole]
        if pil_format == "PNG":
            assert known.max() == 0
        else:  # lossy: re-encoded, close to the input
            assert known.mean() < 4, (name, known.mean())
    if fmt != "webp":
        assert decoded(out / ("tac.png" if fmt == "same" else "tac.jpg"))[2] == icc


def test_lossless_webp_at_quality_100(inpainter, folder, tmp_path):
    images, mask, hole, _ = folder
    run_folder(inpainter, job(images, mask, tmp_path / "out", OutputSettings("webp", 100)), progress=False)
    result, _, _ = decoded(tmp_path / "out" / "tac.webp")
    original, _, _ = decoded(images / "tac.png")
    assert np.array_equal(result[~hole], original[~hole])


def test_alpha_to_jpeg_fails_that_file_before_inference(inpainter, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    photo = skimage.data.chelsea()
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])).save(images / "alpha.png")
    Image.fromarray(photo).save(images / "plain.png")
    hole = np.zeros(photo.shape[:2], np.uint8)
    hole[10:40, 10:40] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    report = run_folder(
        inpainter, job(images, tmp_path / "mask.png", tmp_path / "out", OutputSettings("jpg")), progress=False
    )
    by_name = {f.image.rsplit("/", 1)[1]: f for f in report.files}
    assert by_name["plain.png"].status == "ok"
    assert by_name["alpha.png"].status == "failed"
    assert by_name["alpha.png"].error == (
        "the image has an alpha channel, which JPEG cannot store: use --output-format png or webp"
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["plain.jpg"]


def test_settings_are_checked():
    assert output_name(Path("a/b.JPEG"), "same") == "b.jpeg"
    for bad in (dict(format="gif"), dict(quality=0), dict(png_level=10)):
        with pytest.raises(PConvError):
            OutputSettings(**bad)


def test_help_says_lossy_formats_reencode_known_pixels():
    import typer

    from pconv_deploy.cli import app

    infer = typer.main.get_command(app).commands["infer"]
    [option] = [p for p in infer.params if p.name == "output_format"]
    assert "jpg, webp: lossy, so the KNOWN pixels are re-encoded too" in option.help
    assert option.default in ("png", None) or getattr(option.default, "value", None) == "png"
