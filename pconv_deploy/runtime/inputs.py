"""Input discovery for the folder job: which images to inpaint, with which mask, into which output file.

Pairing is by file stem (IOPaint's rule); a single mask file serves every image. Hidden files are
ignored; so are subfolders, unless named like an image (then they fail, as a dangling link does).
An existing folder at an output path fails its image (it is not "skipped"). Masks without an
image are listed by :func:`orphan_masks` (the report lists them; the CLI warns before the run). Every image gets a
:class:`FileResult`, already ``failed`` or ``skipped`` when that can be decided without decoding,
so the report lists every input.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pconv_deploy.contract import IMAGE_SUFFIXES
from pconv_deploy.runtime.images import InputError, precheck
from pconv_deploy.runtime.outputs import output_name


@dataclass
class FileResult:
    """One line of the report. ``status``: ok | skipped | failed | pending (not reached before an interrupt)."""

    image: str
    mask: str | None
    output: str | None
    status: str = "pending"
    error: str | None = None
    warning: str | None = None  # inpainted, but look at it (e.g. a hole larger than the model was trained for)


def pair_files(
    images: Path, masks: Path, output: Path, *, overwrite: bool, output_format: str = "png"
) -> list[FileResult]:
    """One FileResult per image file, with its mask and output path, or already failed / skipped."""
    image_files = [images] if images.is_file() else visible_files(images)
    shared_mask = masks if masks.is_file() else None
    masks_by_stem: dict[str, list[Path]] = defaultdict(list)
    if shared_mask is None:
        for m in visible_files(masks):
            masks_by_stem[m.stem].append(m)
    by_output: dict[str, list[Path]] = defaultdict(list)
    for f in image_files:
        by_output[output_name(f, output_format)].append(f)
    inputs = {p.resolve() for p in image_files} | {p.resolve() for ps in masks_by_stem.values() for p in ps}
    if shared_mask is not None:
        inputs.add(shared_mask.resolve())
    out_root = output.resolve()

    results = []
    for f in image_files:
        mask_candidates = [shared_mask] if shared_mask else sorted(masks_by_stem.get(f.stem, []))
        r = FileResult(str(f), str(mask_candidates[0]) if len(mask_candidates) == 1 else None, None)
        results.append(r)
        out = output / output_name(f, output_format)
        if not valid_stem(f.stem) or out.resolve().parent != out_root:
            r.status, r.error = "failed", f"file name {f.name!r} cannot name an output inside {output}"
            continue
        r.output = str(out)
        try:
            precheck(f)
        except InputError as e:
            r.status, r.error = "failed", str(e)
            continue
        if len(by_output[out.name]) > 1:
            others = ", ".join(p.name for p in by_output[out.name] if p != f)
            r.status, r.error = "failed", f"same stem as {others}: both would write {out.name}"
        elif not mask_candidates:
            r.status, r.error = "failed", f"no mask named {f.stem}.* in {masks}"
        elif len(mask_candidates) > 1:
            names = ", ".join(p.name for p in mask_candidates)
            r.status, r.error = "failed", f"several masks for {f.stem}: {names}"
        elif out.resolve() in inputs:
            r.status, r.error = "failed", f"output {out} would overwrite an input file: choose another --output"
        elif out.is_dir() or (out.exists() and not out.is_file()):
            what = "a folder" if out.is_dir() else "not a regular file"
            r.status, r.error = "failed", f"output {out} exists and is {what}: remove it or choose another --output"
        elif out.exists() and not overwrite:
            r.status = "skipped"
    return results


def orphan_masks(images: Path, masks: Path) -> list[str]:
    """One warning per mask of a masks folder that no image of an images folder pairs with (a typo'd or
    missing image): the folder job's report lists them all, the CLI prints them before the run."""
    if not images.is_dir() or not masks.is_dir():
        return []
    stems = {f.stem for f in visible_files(images)}
    return [f"mask {m} has no image in {images}" for m in visible_files(masks) if m.stem not in stems]


def visible_files(folder: Path) -> list[Path]:
    """Visible regular files, and visible entries named like images that are not regular files.

    A folder called ``x.png``, a dangling symbolic link or a FIFO named like an image is listed so
    that it fails with a message; other subfolders are not inputs (discovery does not recurse).
    """
    return sorted(
        Path(e.path)
        for e in os.scandir(folder)
        if not e.name.startswith(".") and (e.is_file() or Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
    )


def valid_stem(stem: str) -> bool:
    """A stem that names a file inside the output folder: only this system's separators are refused."""
    separators = {os.sep, os.altsep or os.sep, "\0"}
    return bool(stem) and stem not in (".", "..") and not any(c in stem for c in separators)
