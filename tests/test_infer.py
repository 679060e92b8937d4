"""`pconv infer` end to end: real photos, real files, a real subprocess, the ONNX Runtime backend."""

import hashlib
import io
import json

import cv2
import numpy as np
import pytest
import skimage.data
from helpers.cli import infer_args, pconv
from helpers.images import save, save_mask, strokes
from PIL import Image


def tree_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def stray_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photos of several sizes (none a multiple of 256 but the astronaut; one over 2000 px) and stroke masks."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    big = cv2.resize(skimage.data.coffee(), (2400, 1600), interpolation=cv2.INTER_CUBIC)
    arrays = {
        "astronaut": skimage.data.astronaut(),  # 512 x 512
        "chelsea": skimage.data.chelsea(),  # 451 x 300
        "rocket": skimage.data.rocket(),  # 640 x 427
        "camera": skimage.data.camera(),  # greyscale
        "big_coffee": big,  # 2400 x 1600
    }
    for i, (name, array) in enumerate(arrays.items()):
        save(root / "images" / f"{name}.png", array)
        save_mask(root / "masks" / f"{name}.png", strokes(*array.shape[:2], seed=i))
    return root


def test_infer_real_photos(photos, small_onnx, small_checkpoint, tmp_path):
    before = tree_digest(photos / "images") | tree_digest(photos / "masks")
    out = tmp_path / "out"
    r = pconv(
        *infer_args(
            photos / "images",
            photos / "masks",
            out,
            "--model",
            small_onnx,
            "--backend",
            "onnxruntime",
            "--batch-size",
            "2",
            "--report",
            tmp_path / "r.json",
        )
    )
    assert r.returncode == 0, r.stderr
    assert "5 inpainted, 0 skipped (output exists), 0 failed" in r.stdout and "onnxruntime-cpu" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"] == {"ok": 5, "skipped": 0, "failed": 0, "pending": 0, "total": 5, "warned": 0}
    assert report["backend"] == "onnxruntime-cpu" and report["strategy"] == "crop"
    for image_path in sorted((photos / "images").iterdir()):
        image = np.asarray(Image.open(image_path))
        hole = np.asarray(Image.open(photos / "masks" / image_path.name)) >= 128
        result = np.asarray(Image.open(out / image_path.name))
        assert result.shape == image.shape, image_path.name
        assert np.array_equal(result[~hole], image[~hole]), image_path.name
        assert (result[hole] != image[hole]).mean() > 0.5, image_path.name
    assert stray_files(out) == []
    assert tree_digest(photos / "images") | tree_digest(photos / "masks") == before  # inputs untouched

    # The torch backend on the checkpoint gives the same pixels (within rounding).
    ref = tmp_path / "ref"
    r = pconv(
        *infer_args(
            photos / "images" / "chelsea.png", photos / "masks", ref, "--model", small_checkpoint, "--backend", "torch"
        )
    )
    assert r.returncode == 0, r.stderr
    a = np.asarray(Image.open(ref / "chelsea.png")).astype(int)
    b = np.asarray(Image.open(out / "chelsea.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_skip_overwrite_shared_mask_and_inputs_as_output(small_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    save(images / "a.png", skimage.data.chelsea())
    save(images / "b.jpg", skimage.data.chelsea())
    hole = strokes(300, 451, seed=3)
    mask = save_mask(tmp_path / "one_mask.png", hole)
    inputs = tree_digest(images)

    # --output is the images folder: outputs would become inputs (issue 16): a usage error, nothing written.
    r = pconv(*infer_args(images, mask, images, "--model", small_onnx))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --output {images}: is the same folder as --images {images}; choose another"
    assert tree_digest(images) == inputs

    out = tmp_path / "out"
    r = pconv(*infer_args(images, mask, out, "--model", small_onnx))
    assert r.returncode == 0 and "2 inpainted, 0 skipped" in r.stdout, r.stderr
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = pconv(*infer_args(images, mask, out, "--model", small_onnx))
    assert r.returncode == 0 and "0 inpainted, 2 skipped" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    r = pconv(*infer_args(images, mask, out, "--model", small_onnx, "--overwrite"))
    assert r.returncode == 0 and "2 inpainted, 0 skipped" in r.stdout
    assert all(p.stat().st_mtime_ns != first[p.name] for p in out.iterdir())


def test_bad_inputs_reported_per_file(small_onnx, tmp_path):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    cat = skimage.data.chelsea()  # 451 x 300
    hole = strokes(300, 451, seed=1)

    def pair(stem, data, suffix=".png", mask=hole):
        path = images / f"{stem}{suffix}"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            save(path, data)
        if mask is not None:
            save_mask(masks / f"{stem}.png", mask)

    jpeg = io.BytesIO()
    Image.fromarray(cat).save(jpeg, "JPEG")
    pair("good", cat)
    pair("grey", skimage.data.camera()[:300, :451])
    pair("rgba", np.dstack([cat, np.full((300, 451), 128, np.uint8)]))
    pair("garbage", b"\x89PNG this is not really a png" * 10)
    pair("truncated", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], ".jpg")
    pair("zero", b"")
    pair("notes", b"not an image", ".txt", mask=None)
    pair("wrong_size", cat, mask=hole[:200])
    pair("no_mask", cat, mask=None)
    pair("huge", cv2.resize(cat, (902, 600)), mask=np.ones((600, 902), bool))
    pair("empty_mask", cat, mask=np.zeros((300, 451), bool))
    cv2.imwrite(str(images / "deep.png"), (cat.astype(np.uint16) * 257)[..., ::-1])  # 16-bit RGB
    save_mask(masks / "deep.png", hole)
    inputs = tree_digest(images) | tree_digest(masks)

    report_path = tmp_path / "report.json"
    r = pconv(*infer_args(images, masks, out, "--model", small_onnx, "--max-pixels", 500_000, "--report", report_path))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    report = json.loads(report_path.read_text())
    assert report["totals"] == {"ok": 3, "skipped": 0, "failed": 9, "pending": 0, "total": 12, "warned": 0}
    by_name = {f["image"].rsplit("/", 1)[1]: f for f in report["files"]}
    expected = {
        "good.png": None,
        "grey.png": None,
        "rgba.png": None,
        "garbage.png": "image is unreadable: unknown format or corrupt header",
        "truncated.jpg": "image is corrupt or truncated (",
        "zero.png": "image is empty (0 bytes)",
        "notes.txt": "not an image file (.txt): expected PNG, JPEG, WebP, BMP or TIFF",
        "wrong_size.png": f"mask {masks / 'wrong_size.png'} is 451x200 but the image is 451x300",
        "no_mask.png": f"no mask named no_mask.* in {masks}",
        "huge.png": "image is 902x600 = 541,200 pixels, over the limit of 500,000 (--max-pixels)",
        "empty_mask.png": (
            f"mask {masks / 'empty_mask.png'} marks no hole (white = hole with --mask-convention hole-white)"
        ),
        "deep.png": "16-bit images are not supported (RGB PNG): convert to 8 bits per channel",
    }
    assert set(by_name) == set(expected)
    for name, error in expected.items():
        entry = by_name[name]
        assert entry["status"] == ("ok" if error is None else "failed"), name
        if name == "truncated.jpg":
            assert entry["error"].startswith(error) and "\n" not in entry["error"]
        else:
            assert entry["error"] == error, name
    # One line per failure on stderr, naming the file.
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 9
    for name, error in expected.items():
        if error is not None:
            assert sum(line.startswith(f"failed: {images / name}: ") for line in lines) == 1, name
    # Good files done (grey stays grey, alpha kept), nothing else written, inputs untouched.
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "grey.png", "rgba.png"]
    assert Image.open(out / "grey.png").mode == "L"
    rgba = np.asarray(Image.open(out / "rgba.png"))
    assert rgba.shape == (300, 451, 4) and (rgba[..., 3] == 128).all()
    assert tree_digest(images) | tree_digest(masks) == inputs


def test_usage_errors_exit_2(small_onnx, tmp_path):
    (tmp_path / "images").mkdir()
    cases = [
        # an empty folder (and the default, bundled model)
        ("--images", tmp_path / "images", "--masks", tmp_path / "images", "--output", tmp_path / "o"),
        ("--images", tmp_path / "nope", "--masks", tmp_path, "--output", tmp_path / "o", "--model", small_onnx),
        ("--images", tmp_path, "--masks", tmp_path, "--output", tmp_path / "o", "--model", tmp_path / "m.onnx"),
        (
            "--images",
            tmp_path,
            "--masks",
            tmp_path,
            "--output",
            tmp_path / "o",
            "--model",
            small_onnx,
            "--batch-size",
            0,
        ),
        (
            "--images",
            tmp_path,
            "--masks",
            tmp_path,
            "--output",
            tmp_path / "o",
            "--model",
            small_onnx,
            "--strategy",
            "x",
        ),
    ]
    for args in cases:
        r = pconv("infer", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_margin_sets_the_context_crop_windows_carry(small_onnx, tmp_path):
    """--margin reaches the crop planner: a wide margin is the whole image (= full), none is a small window."""
    from pconv_deploy.runtime.tiles import CROP_MARGIN

    image = skimage.data.astronaut()[::2, ::2]  # 256 x 256; the small model's multiple is 32
    hole = np.zeros(image.shape[:2], bool)
    hole[118:138, 118:138] = True  # 20 x 20: margin 0 gives a 32 px window, 64 a 160 px one, 200 all
    save(tmp_path / "in.png", image)
    save_mask(tmp_path / "mask.png", hole)
    runs = {"none": [], "margin 0": ["--margin", 0], "margin 200": ["--margin", 200]}
    runs |= {"default value": ["--margin", CROP_MARGIN], "full": ["--strategy", "full"]}
    outs = {}
    for name, extra in runs.items():
        out = tmp_path / name.replace(" ", "_")
        args = ("--images", tmp_path / "in.png", "--masks", tmp_path / "mask.png", "--output", out)
        r = pconv("infer", *args, "--model", small_onnx, *extra)
        assert r.returncode == 0, r.stderr
        outs[name] = np.asarray(Image.open(out / "in.png"))
        assert np.array_equal(outs[name][~hole], image[~hole])
    assert np.array_equal(outs["margin 200"], outs["full"])
    assert np.array_equal(outs["none"], outs["default value"])
    for name in ("margin 0", "none"):  # a smaller window changes the fill (slightly, for this model)
        assert not np.array_equal(outs[name], outs["full"]), name
    assert not np.array_equal(outs["none"], outs["margin 0"])


def test_hole_larger_than_trained_warns_naming_the_convention(small_onnx, tmp_path):
    """A mask saved with the hole black reads as a ~95 % hole: inpainted (exit 0) but warned, per file, counted."""
    from pconv_deploy.contract import TRAINED_HOLE_RATIO

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    hole = np.zeros((96, 128), bool)
    hole[30:50, 40:80] = True  # 6.5 % of the image
    for name in ("inverse", "normal", "edge"):
        save(images / f"{name}.png", np.full((96, 128, 3), 120, np.uint8))
    save_mask(masks / "inverse.png", ~hole)  # the hole drawn black: white (= hole by default) is 93.5 %
    save_mask(masks / "normal.png", hole)
    edge = np.zeros((96, 128), bool)
    edge.flat[: int(TRAINED_HOLE_RATIO * edge.size)] = True  # exactly at the trained range: no warning
    save_mask(masks / "edge.png", edge)
    report = tmp_path / "report.json"
    r = pconv(*infer_args(images, masks, tmp_path / "out", "--model", small_onnx, "--report", report))
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "inverse.png" in lines[0] and f"{1 - hole.mean():.0%} of the image" in lines[0]
    assert "--mask-convention hole-black" in lines[0] and f"{TRAINED_HOLE_RATIO:.0%}" in lines[0]
    data = json.loads(report.read_text())
    assert data["totals"]["warned"] == 1 and data["totals"]["ok"] == 3
    assert [f["warning"] is not None for f in data["files"]] == [False, True, False]  # edge, inverse, normal
    r = pconv(*infer_args(images, masks, tmp_path / "out2", "--model", small_onnx, "--mask-convention", "hole-black"))
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("warning:")]
    assert r.returncode == 0 and len(lines) == 1 and "normal.png" in lines[0]  # edge: 40 % black
    assert "--mask-convention hole-white" in lines[0]


# The Python API behind the command: pconv_deploy.infer ---------------------------------------------
def test_the_api_writes_what_the_command_writes(photos, small_onnx, tmp_path, monkeypatch, capsys):
    """``infer(InferOptions(...))`` with the command's settings writes the same bytes and the same report."""
    from helpers.cli import run_cli

    from pconv_deploy.infer import FolderOptions, InferOptions, InpaintOptions, infer
    from pconv_deploy.runtime.pipeline import write_report

    (photos / "masks" / "orphan.png").write_bytes((photos / "masks" / "chelsea.png").read_bytes())
    try:
        flags = ["--model", small_onnx, "--backend", "onnxruntime", "--batch-size", 3, "--margin", 40]
        args = infer_args(
            photos / "images", photos / "masks", tmp_path / "cli", *flags, "--report", tmp_path / "cli.json"
        )
        code, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, err
        folder = FolderOptions(images=photos / "images", masks=photos / "masks", output=tmp_path / "api")
        inpaint = InpaintOptions(batch_size=3, margin=40)
        options = InferOptions(model=small_onnx, backend="onnxruntime", folder=folder, inpaint=inpaint)
        report = infer(options, progress=False)
    finally:
        (photos / "masks" / "orphan.png").unlink()
    assert tree_digest(tmp_path / "api") == tree_digest(tmp_path / "cli") and len(tree_digest(tmp_path / "api")) == 5
    ours = json.loads(write_report(report, tmp_path / "api.json").read_text())
    theirs = json.loads((tmp_path / "cli.json").read_text())
    for data in (ours, theirs):
        data.pop("seconds"), data.pop("peak_memory_bytes"), data.pop("memory_limit_bytes")  # of this moment
        for f in data["files"]:
            f["output"] = f["output"].rsplit("/", 1)[1]
    assert ours == theirs
    assert ours["model"] == str(small_onnx) and ours["warnings"] == [
        f"mask {photos / 'masks' / 'orphan.png'} has no image in {photos / 'images'}"
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": True, "servers": ("http://127.0.0.1:1",)}, "give exactly one of a model"),
        ({}, "give exactly one of a model"),
        ({"model": True, "threads": 0}, "threads must be >= 1, got 0"),
        ({"model": True, "server_wait": -1}, "server_wait must be >= 0 seconds, got -1"),
    ],
)
def test_infer_options_check_themselves(fields, message, small_onnx, tmp_path):
    from pconv_deploy.errors import UsageError
    from pconv_deploy.infer import FolderOptions, InferOptions

    folder = FolderOptions(images=tmp_path, masks=tmp_path, output=tmp_path / "out")
    with pytest.raises(UsageError) as caught:
        InferOptions(folder=folder, **(fields | ({"model": small_onnx} if "model" in fields else {})))
    assert str(caught.value).startswith(message) and caught.value.exit_code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strategy": "tile"}, "unknown strategy 'tile': choose one of crop, resize, full"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"max_side": 0}, "max_side must be >= 1, got 0"),
        ({"inflight": 0}, "inflight must be >= 1, got 0"),
        ({"margin": -1}, "margin must be >= 0, got -1"),
        ({"memory_limit": "6GiB"}, "memory_limit must be bytes >= 1, None or 'auto', got '6GiB'"),
        ({"memory_limit": 0}, "memory_limit must be bytes >= 1"),
    ],
)
def test_inpaint_options_check_themselves(fields, message):
    from pconv_deploy.errors import UsageError
    from pconv_deploy.infer import InpaintOptions

    with pytest.raises(UsageError) as caught:
        InpaintOptions(**fields)
    assert str(caught.value).startswith(message) and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mask_convention": "white"}, "unknown mask convention 'white': choose one of hole-white, hole-black"),
        ({"workers": 0}, "workers and max_pixels must be >= 1, got 0 and"),
        ({"max_pixels": 0}, "workers and max_pixels must be >= 1, got 2 and 0"),
    ],
)
def test_folder_options_check_themselves(fields, message, tmp_path):
    from pconv_deploy.errors import UsageError
    from pconv_deploy.infer import FolderOptions

    with pytest.raises(UsageError) as caught:
        FolderOptions(images=tmp_path, masks=tmp_path, output=tmp_path, **fields)
    assert str(caught.value).startswith(message)


def test_the_command_defaults_are_the_options_defaults():
    """Each `pconv infer` flag's default is its option's default (spelled twice, checked here)."""
    import dataclasses
    import inspect

    from pconv_deploy.cli.infer import infer as command
    from pconv_deploy.infer import FolderOptions, InferOptions, InpaintOptions
    from pconv_deploy.runtime.outputs import OutputSettings

    flags = {name: getattr(p.default, "value", p.default) for name, p in inspect.signature(command).parameters.items()}
    renamed = {"format": "output_format", "precision": "inference_precision", "servers": "server"}
    checked = []
    for options in (InferOptions, InpaintOptions, FolderOptions, OutputSettings):
        for field in dataclasses.fields(options):
            flag = renamed.get(field.name, field.name)
            if (
                flag in flags
                and field.default is not dataclasses.MISSING
                and flag not in ("inflight", "server", "memory_limit")
            ):
                assert flags[flag] == field.default, f"--{flag.replace('_', '-')}: {flags[flag]} != {field.default}"
                checked.append(flag)
    assert len(checked) >= 14, checked
