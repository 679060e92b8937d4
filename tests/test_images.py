"""Reading images and masks (runtime/images.py): the cases an adversarial run of `pconv infer` found.

Real files written with Pillow, read back by the code under test; expectations come from how the
files were made (which pixels are transparent, which are strokes), not from the reader.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pytest
from helpers.images import neutral_cmyk_profile
from PIL import Image

from pconv_deploy.runtime.images import InputError, own_pixel_limit, read_image, read_mask

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
STROKE = np.zeros((40, 50), bool)
STROKE[10:20, 5:35] = True


# --- masks with transparency (defect 1) and masks that mark everything ------------------------------


@pytest.mark.parametrize("convention", ["hole-white", "hole-black"])
def test_alpha_carries_the_stroke_white_rgb_everywhere(tmp_path, convention):
    """An editor's export: RGB white (or black) everywhere, the stroke only in alpha. Transparent = not a hole."""
    value = 255 if convention == "hole-white" else 0
    rgba = np.dstack([np.full((40, 50, 3), value, np.uint8), STROKE.astype(np.uint8) * 255])
    Image.fromarray(rgba).save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png", convention) == STROKE).all()


def test_alpha_masks_in_other_modes(tmp_path):
    """Grey+alpha, a palette with a transparent entry, and a tRNS colour key all mean the same thing."""
    la = np.dstack([np.full((40, 50), 255, np.uint8), STROKE.astype(np.uint8) * 255])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    grey = np.where(STROKE, 255, 7).astype(np.uint8)  # grey 7 = the colour key (transparent)
    Image.fromarray(grey).save(tmp_path / "key.png", transparency=7)
    pal = Image.fromarray(STROKE.astype(np.uint8), "P")
    pal.putpalette([255, 255, 255, 255, 255, 255])  # both entries white; entry 0 transparent
    pal.save(tmp_path / "pal.png", transparency=0)
    for name in ("la.png", "key.png", "pal.png"):
        assert (read_mask(tmp_path / name) == STROKE).all(), name


def test_opaque_alpha_is_ignored_and_grey_strokes_still_work(tmp_path):
    rgba = np.dstack([np.repeat(STROKE[..., None] * np.uint8(255), 3, axis=2), np.full((40, 50), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png") == STROKE).all()


def test_mask_that_marks_every_pixel_is_refused(tmp_path):
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(InputError, match=r"^mask marks every pixel as a hole \(white = hole with --mask-convention"):
        read_mask(tmp_path / "white.png")
    Image.fromarray(np.zeros((40, 50, 4), np.uint8)).save(tmp_path / "clear.png")
    with pytest.raises(InputError, match="^mask is fully transparent"):
        read_mask(tmp_path / "clear.png")
    # the same white file under the other convention is no hole at all: not refused here (the job says "no hole")
    assert not read_mask(tmp_path / "white.png", "hole-black").any()


# --- colour-key transparency (defect 6) ------------------------------------------------------------


def test_png_trns_on_rgb_and_grey_becomes_alpha(tmp_path):
    rgb = PHOTO.copy()
    rgb[0, :3] = (10, 20, 30)  # the colour key, three times
    keyed = (rgb == (10, 20, 30)).all(axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(10, 20, 30))
    picture = read_image(tmp_path / "rgb.png")
    assert (picture.pixels == rgb).all()
    assert picture.alpha is not None and ((picture.alpha == 0) == keyed).all() and keyed.sum() >= 3

    grey = PHOTO[..., 1].copy()
    grey[5, :4] = 99
    Image.fromarray(grey).save(tmp_path / "grey.png", transparency=99)
    picture = read_image(tmp_path / "grey.png")
    assert picture.pixels.ndim == 2 and (picture.pixels == grey).all()
    assert ((picture.alpha == 0) == (grey == 99)).all()


def test_plain_rgb_has_no_alpha(tmp_path):
    Image.fromarray(PHOTO).save(tmp_path / "p.png")
    picture = read_image(tmp_path / "p.png")
    assert picture.alpha is None and (picture.pixels == PHOTO).all()


# --- CMYK and ICC profiles (defect 7) ---------------------------------------------------------------


def test_cmyk_jpeg_is_converted_through_its_profile(tmp_path):
    cmyk = RNG.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    cmyk[:20, :, 3] = 0  # top half: no black ink, so the profile says white
    cmyk[20:, :, 3] = 255  # bottom half: full black
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100, icc_profile=neutral_cmyk_profile())
    picture = read_image(tmp_path / "c.jpg")
    assert picture.pixels.shape == (40, 50, 3) and picture.icc_profile is None  # sRGB out, no CMYK profile
    top, bottom = picture.pixels[:20].astype(int), picture.pixels[20:].astype(int)
    assert top.min() >= 235 and bottom.max() <= 20  # levels from K through the profile...
    naive = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    assert np.abs(naive[:20].astype(int) - top).mean() > 50  # ...not Pillow's formula, which shows the CMY inks


def test_cmyk_with_a_broken_profile_falls_back_and_drops_it(tmp_path):
    broken = bytes(16) + b"CMYK" + bytes(108)
    cmyk = RNG.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", icc_profile=broken)
    picture = read_image(tmp_path / "c.jpg")
    assert picture.icc_profile is None
    assert (picture.pixels == np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))).all()


def test_matching_profile_is_kept(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(PHOTO).save(tmp_path / "p.png", icc_profile=srgb)
    Image.fromarray(PHOTO[..., 0]).save(tmp_path / "g.png", icc_profile=srgb)  # an RGB profile on grey pixels
    assert read_image(tmp_path / "p.png").icc_profile == srgb
    assert read_image(tmp_path / "g.png").icc_profile is None


# --- deep pixels (defect 11) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, depth",
    [
        (np.full((8, 8), 0.5, np.float32), "32-bit float"),
        (np.full((8, 8), 70000, np.int32), "32-bit integer"),
        (np.full((8, 8), 300, np.uint16), "16-bit"),
    ],
)
def test_deep_tiffs_refused_with_their_real_depth(tmp_path, array, depth):
    Image.fromarray(array).save(tmp_path / "d.tif")
    with pytest.raises(InputError, match=f"^{depth} images are not supported .*: convert to 8 bits per channel$"):
        read_image(tmp_path / "d.tif")


# --- the pixel limit against Pillow's own (defect 8) ------------------------------------------------


def test_max_pixels_replaces_pillows_limit(tmp_path, monkeypatch):
    """Pillow refuses over 2x MAX_IMAGE_PIXELS and warns over 1x: neither may override --max-pixels.

    Pillow's limit is lowered to 500 pixels here (its check is the same at any value), so a 2,000-pixel
    image plays the 196 MP photo that `--max-pixels 300000000` must accept.
    """
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    Image.fromarray(PHOTO).save(tmp_path / "p.png")
    Image.fromarray(STROKE.astype(np.uint8) * 255).save(tmp_path / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
        assert read_image(tmp_path / "p.png", max_pixels=2000).pixels.shape == (40, 50, 3)
        assert read_mask(tmp_path / "m.png", max_pixels=2000).sum() == STROKE.sum()
        with pytest.raises(InputError, match=r"^image is 50x40 = 2,000 pixels, over the limit of 1,999"):
            read_image(tmp_path / "p.png", max_pixels=1999)
    assert Image.MAX_IMAGE_PIXELS == 500  # restored for everyone else


def test_limit_is_restored_after_overlapping_reads_in_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    Image.fromarray(PHOTO).save(tmp_path / "p.png")
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(30):
                read_image(tmp_path / "p.png", max_pixels=2000)
        except BaseException as e:  # noqa: BLE001 - collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and Image.MAX_IMAGE_PIXELS == 500 and own_pixel_limit.users == 0


def test_huge_header_refused_before_decoding_without_warning(tmp_path):
    """A 100 MP (all-black, 97 kB) PNG at the default limits: our message, no DecompressionBombWarning."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((10_000, 10_000), np.uint8)).save(buf, "PNG", compress_level=9)
    (tmp_path / "big.png").write_bytes(buf.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"^image is 10000x10000 = 100,000,000 pixels, over the limit of 60,000,"):
            read_image(tmp_path / "big.png")
