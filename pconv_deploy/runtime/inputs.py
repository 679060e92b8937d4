"""Input discovery for the folder job: which images to inpaint, with which mask, into which output file.

Pairing is by file stem (IOPaint's rule); a single mask file serves every image. Hidden files are
ignored. Every image gets a :class:`FileResult`, already ``failed`` or ``skipped`` when that can be
decided without decoding, so the report lists every input.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

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


def pair_files(
    images: Path, masks: Path, output: Path, overwrite: bool, output_format: str = "png"
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
        elif out.exists() and not overwrite:
            r.status = "skipped"
    return results


def visible_files(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())


def valid_stem(stem: str) -> bool:
    return bool(stem) and stem not in (".", "..") and not any(c in stem for c in "/\\\0")
