"""The demo model's photo corpus: the held-out split shares no photo with training, by id, group, file or look."""

import re
from pathlib import Path

import numpy as np
import pytest

from pconv_deploy.train import photos

MODEL_CARD = Path(__file__).resolve().parent.parent / "docs" / "model-card.md"


def split(name):
    rows = photos.read_split(name)
    groups = {}
    for line in photos.SPLITS[name].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            photo_id, _digest, group = line.split("\t")[:3]
            groups[photo_id] = group
    return rows, groups


def present(name):
    rows = [(i, d, photos.photo_path(i)) for i, d in photos.read_split(name)]
    return [(i, d, p) for i, d, p in rows if p is not None]


def test_split_lists_are_disjoint_and_follow_the_recorded_rule():
    train, train_groups = split("demo-train")
    held, held_groups = split("demo-heldout")
    train_ids, held_ids = {i for i, _ in train}, {i for i, _ in held}
    assert len(held_ids) == len(held) >= photos.HELDOUT_MIN_PHOTOS and len(train_ids) == len(train)
    assert not train_ids & held_ids
    assert not {d for _, d in train} & {d for _, d in held}  # no file in both, under any name
    assert not set(train_groups.values()) & set(held_groups.values())  # no near-duplicate group is cut
    assert train_ids | held_ids == set(photos.BY_ID)  # every catalogued photo is in exactly one list
    assert sorted(held_ids) == photos.heldout_ids()  # the committed list is what the rule gives
    for photo_id in held_ids:  # held out: real colour photos that neither model version trained on
        entry = photos.BY_ID[photo_id]
        assert entry.kind == "photo" and not entry.train_only, photo_id
        assert held_groups[photo_id] == entry.group


def test_installed_files_match_their_recorded_hashes():
    from pconv_deploy.contract import file_sha256

    rows = present("demo-train") + present("demo-heldout")
    if not rows:
        pytest.skip(f"no corpus photos installed ({photos.INSTALL_HINT})")
    for photo_id, digest, path in rows:
        assert file_sha256(path) == digest, photo_id


def recorded_thumbnails(name):
    rows = [line.split("\t") for line in photos.SPLITS[name].read_text().splitlines() if not line.startswith("#")]
    return [r[0] for r in rows], np.stack([photos.thumbnail_from_hex(r[3]) for r in rows])


def test_no_held_out_photo_looks_like_a_training_photo():
    """Cosine of recorded 8x8 thumbnails (the files are the recorded ones: sha256 test above)."""
    held_ids, held = recorded_thumbnails("demo-heldout")
    train_ids, train = recorded_thumbnails("demo-train")
    similarity = held @ train.T
    worst = np.unravel_index(np.argmax(similarity), similarity.shape)
    assert similarity[worst] < 0.95, (held_ids[worst[0]], train_ids[worst[1]], similarity[worst])
    # The check can fail: one picture re-tinted (the Ubuntu-MATE wallpapers, one group in training)
    # scores 0.99; unrelated photos score at most about 0.9 (stereo pairs shift too much to be caught:
    # the groups keep them together).
    tints = [train[train_ids.index(f"debian/mate/desktop/Ubuntu-Mate-{t}-no-logo.png")] for t in ("Cold", "Warm")]
    assert tints[0] @ tints[1] > 0.95


def test_recorded_thumbnails_are_the_files_thumbnails():
    rows = present("demo-heldout")[:4] + present("demo-train")[:4]
    if not rows:
        pytest.skip(f"corpus photos not installed ({photos.INSTALL_HINT})")
    recorded = dict(zip(*recorded_thumbnails("demo-train"))) | dict(zip(*recorded_thumbnails("demo-heldout")))
    for photo_id, _digest, path in rows:
        assert float(photos.thumbnail(path) @ recorded[photo_id]) > 0.999, photo_id


def test_evaluation_and_model_card_use_the_committed_heldout_split():
    from pconv_deploy.train.data import image_paths

    held = photos.read_split("demo-heldout")
    card = MODEL_CARD.read_text()
    assert "--data demo-heldout" in card
    assert re.search(rf"\b{len(held)} held-out photos\b", card), "the model card names the held-out count"
    if all(photos.photo_path(i) is not None for i, _ in held):
        assert image_paths("demo-heldout") == [photos.photo_path(i) for i, _ in held]
