"""The folder job behind `pconv infer`: pair files, stream them through an Inpainter, write the outputs.

Three stages overlap: worker threads decode and plan (Pillow and numpy release the GIL), the
calling thread forms batches of equal padded size (against the memory budget) and keeps up to
``inpainter.inflight`` backend calls running, worker threads composite, encode and write. Every
queue between them is bounded, so memory stays flat however many files there are.

Nothing is lost or corrupted: outputs are written atomically (:mod:`pconv_deploy.runtime.outputs`),
existing outputs are skipped unless ``overwrite``, a rerun after a kill picks up where the
last one stopped, and one bad file is recorded (one line, and in the report) without stopping
the others.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pconv_deploy.contract import DEFAULT_MAX_PIXELS, DEFAULT_WORKERS, MASK_CONVENTIONS, TRAINED_HOLE_RATIO
from pconv_deploy.errors import JobStopped, PConvError, UsageError, first_line
from pconv_deploy.files import clean_stale_temps, write_text_atomic
from pconv_deploy.progress import ProgressBar
from pconv_deploy.runtime.batching import Batch
from pconv_deploy.runtime.images import InputError, Picture, read_image, read_mask
from pconv_deploy.runtime.inpainter import Inpainter, Job
from pconv_deploy.runtime.inputs import FileResult, orphan_masks, pair_files, visible_files
from pconv_deploy.runtime.memory import peak_rss
from pconv_deploy.runtime.outputs import OutputSettings, unstorable, write_image

__all__ = ["FileResult", "FolderOptions", "Report", "pair_files", "run_folder", "visible_files", "write_report"]

REPORT_FORMAT = "pconv-deploy.infer-report/1"


@dataclass
class Report:
    files: list[FileResult]
    model: str = ""
    backend: str = ""
    strategy: str = ""
    output_format: str = "png"
    seconds: float = 0.0
    peak_memory_bytes: int = 0  # ru_maxrss of this process at the end of the run
    memory_limit_bytes: int | None = None  # the whole-process limit batches were formed against
    bytes_per_pixel: int = 0  # the estimated memory of one backend call per input pixel
    interrupted: bool = False
    temps_cleaned: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. masks no image pairs with
    totals: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    def to_json(self) -> dict:
        self.totals = {s: self.count(s) for s in ("ok", "skipped", "failed", "pending")}
        self.totals["total"] = len(self.files)
        self.totals["warned"] = sum(f.warning is not None for f in self.files)
        data = asdict(self)
        files = data.pop("files")
        return {"format": REPORT_FORMAT, **data, "files": files}


@dataclass(eq=False)
class ImageInFlight:
    """One image between decoding and writing: its fills arrive tile by tile (``fills[i]`` for tile i) from
    whichever batches ran them; ``failed`` says one of them failed (the rest still run in their batches,
    and the image is never written)."""

    result: FileResult
    picture: Picture
    job: Job
    fills: dict[int, np.ndarray] = field(default_factory=dict)
    failed: bool = False

    @property
    def complete(self) -> bool:
        return len(self.fills) == len(self.job.tiles)


TileOwner = tuple[ImageInFlight, int]  # the image a batched tile belongs to, and the tile's index in its job


@dataclass(frozen=True, kw_only=True)
class FolderOptions:
    """One folder job: where images, masks and outputs are, and how files are read and written.

    ``images``: a folder or one file; ``masks``: a folder paired by stem, or one mask for every image;
    ``output``: the folder for <stem>.<format>; ``overwrite``: redo images whose output exists.
    """

    images: Path
    masks: Path
    output: Path
    mask_convention: str = "hole-white"
    workers: int = DEFAULT_WORKERS
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    encoding: OutputSettings = OutputSettings()

    def __post_init__(self) -> None:
        for name in ("images", "masks", "output"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.mask_convention not in MASK_CONVENTIONS:
            choices = ", ".join(MASK_CONVENTIONS)
            raise UsageError(f"unknown mask convention {self.mask_convention!r}: choose one of {choices}")
        if self.workers < 1 or self.max_pixels < 1:
            raise UsageError(f"workers and max_pixels must be >= 1, got {self.workers} and {self.max_pixels}")


def run_folder(
    inpainter: Inpainter,
    options: FolderOptions,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Report:
    """Inpaint every image of ``options.images`` into ``options.output``/<stem>.<format>.

    Returns the report; failures are in it, never raised. PConvError only for unusable
    arguments (missing folders). On KeyboardInterrupt, writes in flight finish, the report
    says ``interrupted`` and unfinished files stay ``pending``.
    """
    images, masks, output = options.images, options.masks, options.output
    for path, what in ((images, "--images"), (masks, "--masks")):
        if not path.exists():
            raise PConvError(f"{what} {path}: no such file or folder")
    if output.exists() and not output.is_dir():
        raise PConvError(f"--output {output}: exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    files = pair_files(images, masks, output, overwrite=options.overwrite, output_format=options.encoding.format)
    report = Report(files, strategy=inpainter.strategy, output_format=options.encoding.format)
    report.warnings = orphan_masks(images, masks)
    report.backend = inpainter.backend.name
    report.memory_limit_bytes, report.bytes_per_pixel = inpainter.memory_limit, inpainter.bytes_per_pixel
    report.temps_cleaned = clean_stale_temps(output, targets={Path(r.output).name for r in files if r.output})
    todo = [r for r in report.files if r.status == "pending"]
    started = time.monotonic()
    with ProgressBar("inpainting", len(todo), enabled=progress, unit="images/s") as bar:
        job = FolderRun(inpainter, options, bar, print_line=echo or bar.line)
        for r in report.files:
            if r.status == "failed":
                job.print_line(f"failed: {r.image}: {r.error}")
        todo = job.decode_shared_mask(masks, todo)
        report.interrupted = job.run(todo)
    report.seconds = round(time.monotonic() - started, 3)
    report.peak_memory_bytes = peak_rss()
    return report


class FolderRun:
    """The state of one folder job: its thread pools, the images in flight, the batches being formed."""

    def __init__(
        self, inpainter: Inpainter, options: FolderOptions, bar: ProgressBar, *, print_line: Callable[[str], None]
    ) -> None:
        self.inpainter, self.options, self.bar = inpainter, options, bar
        self.print_line = lambda text: print_line(one_line(text))  # a file name may hold a newline
        self.shared_masks: dict[str, np.ndarray] = {}  # one mask file for all images: decoded once
        self.batcher = inpainter.batcher(max_waiting=2 * inpainter.batch_size)
        self.max_ahead = 2 * options.workers + inpainter.batch_size  # decoded images allowed ahead of inference
        self.decoding: deque[tuple[FileResult, Future]] = deque()
        self.inferring: list[tuple[Batch[TileOwner], Future]] = []
        self.writing: deque[tuple[FileResult, Future]] = deque()

    def decode_shared_mask(self, masks: Path, todo: list[FileResult]) -> list[FileResult]:
        """Decode a single mask file once for every image; if it is unusable every image fails."""
        if not masks.is_file() or not todo:
            return todo
        try:
            self.shared_masks[str(masks)] = read_mask(masks, self.options.mask_convention, self.options.max_pixels)
        except InputError as e:
            for r in todo:
                r.status, r.error = "failed", f"mask {masks}: {e}"
            self.print_line(f"failed: all {len(todo)} images: mask {masks}: {e}")
            return []
        return todo

    def run(self, todo: list[FileResult]) -> bool:
        """Stream ``todo`` through decode -> infer -> write; True if interrupted (Ctrl-C / SIGTERM)."""
        decode_pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="pconv-decode")
        infer_pool = ThreadPoolExecutor(self.inpainter.inflight, thread_name_prefix="pconv-infer")
        self.write_pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="pconv-write")
        queue = iter(todo)
        try:
            while True:
                while len(self.decoding) < self.max_ahead and (r := next(queue, None)) is not None:
                    self.decoding.append((r, decode_pool.submit(self.decode, r)))
                if not self.decoding:
                    break
                self.take_decoded(infer_pool)
                self.collect_batches(block=False)
                self.collect_writes(block=False)
            for batch in self.batcher.flush():
                self.submit_batch(infer_pool, batch)
            self.collect_batches(block=True)
            self.collect_writes(block=True)
            return False
        except KeyboardInterrupt:
            for _, fut in self.decoding:
                fut.cancel()
            self.collect_writes(block=True)  # writes in flight are atomic and quick: let them land
            return True
        finally:
            decode_pool.shutdown(wait=True, cancel_futures=True)
            infer_pool.shutdown(wait=True, cancel_futures=True)
            self.write_pool.shutdown(wait=True)

    def decode(self, r: FileResult) -> ImageInFlight:
        """In a worker thread: read the image and its mask, check them, plan the tiles."""
        opts = self.options
        picture = read_image(r.image, opts.max_pixels)
        try:
            hole = self.shared_masks.get(r.mask) if r.mask else None
            if hole is None:
                hole = read_mask(r.mask, opts.mask_convention, opts.max_pixels)
        except InputError as e:
            raise InputError(f"mask {r.mask}: {e}") from None
        h, w = picture.pixels.shape[:2]
        if hole.shape != (h, w):
            raise InputError(f"mask {r.mask} is {hole.shape[1]}x{hole.shape[0]} but the image is {w}x{h}")
        if not hole.any():
            hint = "white" if opts.mask_convention == "hole-white" else "black"
            raise InputError(
                f"mask {r.mask} marks no hole ({hint} = hole with --mask-convention {opts.mask_convention})"
            )
        problem = unstorable(r.output, picture.alpha is not None)
        if problem:
            raise InputError(problem)
        r.warning = large_hole_warning(r.mask, float(hole.mean()), opts.mask_convention)
        return ImageInFlight(r, picture, self.inpainter.plan(picture.pixels, hole))

    def take_decoded(self, infer_pool: ThreadPoolExecutor) -> None:
        """Wait for the oldest decode, queue its tiles for batching, start the batches that are full."""
        r, fut = self.decoding.popleft()
        try:
            item = fut.result()
        except Exception as e:
            self.record_failure(r, e)
            return
        if r.warning:
            self.print_line(f"warning: {r.image}: {r.warning}")
        if item.complete:  # no hole: nothing to infer
            self.submit_write(item)
        for index, tile in enumerate(item.job.tiles):
            for batch in self.batcher.add(tile, (item, index)):
                self.submit_batch(infer_pool, batch)

    def submit_batch(self, infer_pool: ThreadPoolExecutor, batch: Batch[TileOwner]) -> None:
        """Pad on this thread while the previous call runs, start the call, then crop the finished ones.

        Only the backend call runs on the inference thread: padding and cropping (~30 ms an image at
        512x512, a tenth of a BF16 or INT8 call) overlap it instead of running between calls.
        """
        try:
            inputs = self.inpainter.pad_batch(batch.tiles, batch.shape)
        except Exception as e:  # e.g. MemoryError: these images fail, not the job
            self.fail_batch(batch, e)
            return
        while sum(not f.done() for _, f in self.inferring) >= self.inpainter.inflight:  # bounded
            wait([f for _, f in self.inferring if not f.done()], return_when=FIRST_COMPLETED)
        self.inferring.append((batch, infer_pool.submit(self.inpainter.call, *inputs)))
        del inputs
        self.collect_batches(block=False)

    def collect_batches(self, block: bool) -> None:
        """Account finished backend calls; an image whose last tile ran goes to the writers."""
        if block and self.inferring:
            wait([f for _, f in self.inferring])
        finished = [e for e in self.inferring if e[1].done()]
        self.inferring = [e for e in self.inferring if all(e is not f for f in finished)]  # by identity: no array ==
        for batch, fut in finished:
            try:
                fills = self.inpainter.crop_fills(batch.tiles, fut.result())
            except Exception as e:  # a backend failure fails these images, not the job
                if isinstance(e, JobStopped):  # e.g. every Triton server is down: stop, write nothing more
                    raise
                self.fail_batch(batch, e)
                continue
            for (item, index), fill in zip(batch.owners, fills):
                item.fills[index] = fill
                if item.complete and not item.failed:
                    self.submit_write(item)

    def fail_batch(self, batch: Batch[TileOwner], e: BaseException) -> None:
        error = PConvError(f"inference failed: {type(e).__name__}: {first_line(e)}")
        for item in {item for item, _ in batch.owners}:
            if item.result.status == "pending":
                self.record_failure(item.result, error)
            item.failed = True

    def submit_write(self, item: ImageInFlight) -> None:
        while len(self.writing) >= self.max_ahead:  # bounded: wait for the oldest write
            wait([self.writing[0][1]])
            self.collect_writes(block=False)
        self.writing.append((item.result, self.write_pool.submit(self.write, item)))

    def write(self, item: ImageInFlight) -> None:
        """In a worker thread: paste the fills, encode, write atomically."""
        pixels = item.picture.merged(item.job.finish([item.fills[i] for i in range(len(item.job.tiles))]))
        item.fills.clear()  # the fills are pasted: free them before the encoder's buffers
        write_image(item.result.output, pixels, self.options.encoding, icc_profile=item.picture.icc_profile)

    def collect_writes(self, block: bool) -> None:
        while self.writing and (block or self.writing[0][1].done()):
            r, fut = self.writing.popleft()
            try:
                fut.result()
                r.status = "ok"
                self.bar.advance()
            except Exception as e:
                self.record_failure(r, e)

    def record_failure(self, r: FileResult, e: BaseException) -> None:
        """Mark one file failed with a one-line reason, print it, and count it as done."""
        r.status = "failed"
        r.error = str(e) if isinstance(e, PConvError) else f"{type(e).__name__}: {first_line(e)}"
        self.print_line(f"failed: {r.image}: {r.error}")
        self.bar.advance()


def large_hole_warning(mask: str | None, ratio: float, convention: str) -> str | None:
    """What to say about a mask whose hole is larger than the model's trained range (None: nothing)."""
    if ratio <= TRAINED_HOLE_RATIO:
        return None
    hole, other = ("white", "hole-black") if convention == "hole-white" else ("black", "hole-white")
    return (
        f"mask {mask} makes {ratio:.0%} of the image a hole ({hole} = hole), more than the model is trained for "
        f"(up to {TRAINED_HOLE_RATIO:.0%}); if {hole} marks what to keep, use --mask-convention {other}"
    )


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a file name) escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def write_report(report: Report, path: str | Path) -> Path:
    """The JSON report, written atomically like the images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")
