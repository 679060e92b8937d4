"""The folder job behind `pconv infer`: pair files, stream them through an Inpainter, write PNGs.

Three stages overlap: worker threads decode (Pillow releases the GIL), the calling thread
batches tiles of equal padded size and runs the backend, worker threads composite, encode and
write. Every queue between them is bounded, so memory stays flat however many files there are.

Nothing is lost or corrupted: outputs are written atomically (see ``images.write_png``),
existing outputs are skipped unless ``overwrite``, a rerun after a kill picks up where the
last one stopped, and one bad file is recorded (one line, and in the report) without stopping
the others.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pconv_deploy.errors import PConvError
from pconv_deploy.runtime.backends import first_line
from pconv_deploy.runtime.images import (
    DEFAULT_MAX_PIXELS,
    InputError,
    Picture,
    clean_stale_temps,
    precheck,
    read_image,
    read_mask,
    write_png,
)
from pconv_deploy.runtime.inpainter import Inpainter, Job, Tile

REPORT_FORMAT = "pconv-deploy.infer-report/1"


@dataclass
class FileResult:
    """One line of the report. ``status``: ok | skipped | failed | pending (not reached before an interrupt)."""

    image: str
    mask: str | None
    output: str | None
    status: str = "pending"
    error: str | None = None


@dataclass
class Report:
    files: list[FileResult]
    model: str = ""
    backend: str = ""
    strategy: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    temps_cleaned: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    def to_json(self) -> dict:
        self.totals = {s: self.count(s) for s in ("ok", "skipped", "failed", "pending")}
        self.totals["total"] = len(self.files)
        data = asdict(self)
        files = data.pop("files")
        return {"format": REPORT_FORMAT, **data, "files": files}


def pair_files(images: Path, masks: Path, output: Path, overwrite: bool) -> list[FileResult]:
    """One FileResult per image file, with its mask and output path, or already failed / skipped.

    Pairing is by file stem; a single mask file serves every image. Hidden files are ignored.
    """
    image_files = [images] if images.is_file() else visible_files(images)
    shared_mask = masks if masks.is_file() else None
    masks_by_stem: dict[str, list[Path]] = defaultdict(list)
    if shared_mask is None:
        for m in visible_files(masks):
            masks_by_stem[m.stem].append(m)
    stems: dict[str, list[Path]] = defaultdict(list)
    for f in image_files:
        stems[f.stem].append(f)
    inputs = {p.resolve() for p in image_files} | {p.resolve() for ps in masks_by_stem.values() for p in ps}
    if shared_mask is not None:
        inputs.add(shared_mask.resolve())
    out_root = output.resolve()

    results = []
    for f in image_files:
        mask_candidates = [shared_mask] if shared_mask else sorted(masks_by_stem.get(f.stem, []))
        r = FileResult(str(f), str(mask_candidates[0]) if len(mask_candidates) == 1 else None, None)
        results.append(r)
        out = output / f"{f.stem}.png"
        if not valid_stem(f.stem) or out.resolve().parent != out_root:
            r.status, r.error = "failed", f"file name {f.name!r} cannot name an output inside {output}"
            continue
        r.output = str(out)
        try:
            precheck(f)
        except InputError as e:
            r.status, r.error = "failed", str(e)
            continue
        if len(stems[f.stem]) > 1:
            others = ", ".join(p.name for p in stems[f.stem] if p != f)
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


class Progress:
    """A rich progress bar with images/s on a terminal; plain lines for failures everywhere."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("inpainting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.bar.add_task("infer", total=total, rate="")
            self.start = time.monotonic()
            self.done = 0
            self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.done += 1
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f} images/s")

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass
class _Item:
    """An image between decoding and writing."""

    result: FileResult
    picture: Picture
    job: Job
    remaining: int


def run_folder(
    inpainter: Inpainter,
    images: str | Path,
    masks: str | Path,
    output: str | Path,
    mask_convention: str = "hole-white",
    workers: int = 2,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Report:
    """Inpaint every image of ``images`` (a folder or one file) into ``output``/<stem>.png.

    Returns the report; failures are in it, never raised. PConvError only for unusable
    arguments (missing folders). On KeyboardInterrupt, writes in flight finish, the report
    says ``interrupted`` and unfinished files stay ``pending``.
    """
    images, masks, output = Path(images), Path(masks), Path(output)
    for path, what in ((images, "--images"), (masks, "--masks")):
        if not path.exists():
            raise PConvError(f"{what} {path}: no such file or folder")
    if output.exists() and not output.is_dir():
        raise PConvError(f"--output {output}: exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers)
    report = Report(pair_files(images, masks, output, overwrite), strategy=inpainter.strategy)
    report.backend = inpainter.backend.name
    report.temps_cleaned = clean_stale_temps(output)
    todo = [r for r in report.files if r.status == "pending"]
    bar = Progress(len(todo), progress)
    say = echo or bar.line
    for r in report.files:
        if r.status == "failed":
            say(f"failed: {r.image}: {r.error}")

    shared: dict[str, np.ndarray] = {}  # one mask file for all images: decode it once
    if masks.is_file() and todo:
        try:
            shared[str(masks)] = read_mask(masks, mask_convention, max_pixels)
        except InputError as e:
            for r in todo:
                r.status, r.error = "failed", f"mask {masks}: {e}"
            say(f"failed: all {len(todo)} images: mask {masks}: {e}")
            todo = []

    def decode(r: FileResult) -> tuple[Picture, np.ndarray]:
        picture = read_image(r.image, max_pixels)
        try:
            hole = shared[r.mask] if r.mask in shared else read_mask(r.mask, mask_convention, max_pixels)
        except InputError as e:
            raise InputError(f"mask {r.mask}: {e}") from None
        h, w = picture.pixels.shape[:2]
        if hole.shape != (h, w):
            raise InputError(f"mask {r.mask} is {hole.shape[1]}x{hole.shape[0]} but the image is {w}x{h}")
        if not hole.any():
            hint = "white" if mask_convention == "hole-white" else "black"
            raise InputError(f"mask {r.mask} marks no hole ({hint} = hole with --mask-convention {mask_convention})")
        return picture, hole

    def write(item: _Item) -> None:
        write_png(item.result.output, item.picture.merged(item.job.finish()), item.picture.icc_profile)

    def fail(r: FileResult, e: BaseException) -> None:
        r.status = "failed"
        r.error = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {first_line(e)}"
        say(f"failed: {r.image}: {r.error}")
        bar.advance()

    started = time.monotonic()
    decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="pconv-decode")
    write_pool = ThreadPoolExecutor(workers, thread_name_prefix="pconv-write")
    decoding: deque[tuple[FileResult, Future]] = deque()
    writing: deque[tuple[FileResult, Future]] = deque()
    buckets: dict[tuple[int, int], list[tuple[Tile, _Item]]] = defaultdict(list)
    max_waiting_tiles = 2 * inpainter.batch_size  # tiles held back waiting for a full batch
    ahead = 2 * workers + inpainter.batch_size  # decoded images allowed ahead of inference
    queue = iter(todo)

    def collect_write(block: bool) -> None:
        while writing and (block or writing[0][1].done()):
            r, fut = writing.popleft()
            try:
                fut.result()
                r.status = "ok"
                bar.advance()
            except Exception as e:
                fail(r, e)

    def run_bucket(shape: tuple[int, int], count: int) -> None:
        batch, buckets[shape] = buckets[shape][:count], buckets[shape][count:]
        if not buckets[shape]:
            del buckets[shape]
        items = {id(it): it for _, it in batch}
        try:
            inpainter.run_batch([t for t, _ in batch], shape)
        except Exception as e:  # a backend failure fails these images, not the job
            for it in items.values():
                if it.result.status == "pending":
                    fail(it.result, PConvError(f"inference failed: {type(e).__name__}: {first_line(e)}"))
                    it.remaining = -1
            return
        for _, it in batch:
            it.remaining -= 1
        for it in items.values():
            if it.remaining == 0:
                submit_write(it)

    def submit_write(it: _Item) -> None:
        while len(writing) >= ahead:  # bounded: wait for the oldest write
            wait([writing[0][1]])
            collect_write(block=False)
        writing.append((it.result, write_pool.submit(write, it)))

    try:
        while True:
            while len(decoding) < ahead and (r := next(queue, None)) is not None:
                decoding.append((r, decode_pool.submit(decode, r)))
            if not decoding:
                break
            r, fut = decoding.popleft()
            try:
                picture, hole = fut.result()
                job = inpainter.plan(picture.pixels, hole)
            except Exception as e:
                fail(r, e)
                continue
            item = _Item(r, picture, job, len(job.tiles))
            for tile in job.tiles:
                buckets[tile.padded_shape(inpainter.multiple)].append((tile, item))
            for shape in [s for s, b in buckets.items() if len(b) >= inpainter.batch_size]:
                while len(buckets.get(shape, ())) >= inpainter.batch_size:
                    run_bucket(shape, inpainter.batch_size)
            while sum(len(b) for b in buckets.values()) > max_waiting_tiles:  # many sizes: run partial batches
                shape = max(buckets, key=lambda s: len(buckets[s]))
                run_bucket(shape, inpainter.batch_size)
            collect_write(block=False)
        while buckets:
            shape = next(iter(buckets))
            run_bucket(shape, inpainter.batch_size)
        collect_write(block=True)
    except KeyboardInterrupt:
        report.interrupted = True
        for _, fut in decoding:
            fut.cancel()
        collect_write(block=True)  # writes in flight are atomic and quick: let them land
    finally:
        decode_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True)
        bar.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def write_report(report: Report, path: str | Path) -> Path:
    """The JSON report, written atomically like the images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
