"""Inpainting on numpy arrays: strategies, padding, batching and compositing around a backend.

The flow for one image is ``plan`` (cut it into tiles the network sees) -> ``run_tiles`` (pad
each tile to the model's multiple, batch tiles of equal padded size within the memory budget,
run the backend; returns each tile's fill) -> ``Job.finish(fills)`` (paste the fills into the holes
only). ``InpaintOptions`` holds every setting, checked once. Known pixels are never
written, so they stay byte-identical to the input in every strategy.

Strategies for large photos:

- ``crop`` (default): windows around the holes with context (``tiles.plan_windows``), at native
  resolution; a window longer than ``max_side`` is inferred downscaled (as ``resize`` does).
- ``resize``: the whole image downscaled so its long side is at most ``max_side``; the fill is
  upscaled back (bicubic) and pasted into the holes.
- ``full``: the whole image at native resolution, whatever its size.

Mask convention of this API: a boolean or integer HxW array where nonzero / True marks a
HOLE (as white marks the hole in mask files). The ONNX model itself takes 1 = known.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pconv_deploy.contract import CROP_MARGIN, DEFAULT_BATCH_SIZE, DEFAULT_MAX_SIDE, DEFAULT_STRATEGY, STRATEGIES
from pconv_deploy.errors import PConvError, UsageError
from pconv_deploy.runtime.backends import Backend, load_backend
from pconv_deploy.runtime.batching import ShapeBatcher
from pconv_deploy.runtime.memory import (
    CALL_OVERHEAD,
    activation_bytes_per_pixel,
    call_pixels,
    default_memory_limit,
    format_bytes,
    inference_budget,
)
from pconv_deploy.runtime.tiles import (
    Job,
    Tile,
    align_window,
    hole_windows,
    make_tile,
    plan_windows,
    to_uint8,
)

__all__ = ["STRATEGIES", "InpaintOptions", "Inpainter", "Job", "Tile", "align_window", "hole_windows"]

# A backend may keep one call's buffers for the next call of the same shape (no page faults: ~20% of a
# full-width 512x512 call) when that call needs at most 1/KEEP_SHARE of the inference budget; a call of
# another shape right after can then exceed its own estimate by that much, about the share of the limit
# kept for images in flight (1/8 left a batch of four 512x512 full-width images unkept whenever less
# than ~8 GiB was free).
KEEP_SHARE = 4


@dataclass(frozen=True, kw_only=True)
class InpaintOptions:
    """How an Inpainter cuts, batches and budgets; checked once, here (bad values: UsageError, exit 2).

    ``batch_size``: tiles of equal padded size per backend call; ``strategy``: crop | resize | full;
    ``max_side``: the longest side the network sees (crop and resize); ``margin``: crop context in
    pixels; ``inflight``: backend calls at once (threads; >1 only for a thread-safe remote backend);
    ``memory_limit``: bytes for the whole process ("auto": from MemAvailable; None: no limit).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    strategy: str = DEFAULT_STRATEGY
    max_side: int = DEFAULT_MAX_SIDE
    margin: int = CROP_MARGIN
    inflight: int = 1
    memory_limit: int | None | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        for name in ("batch_size", "max_side", "inflight"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.margin < 0:
            raise UsageError(f"margin must be >= 0, got {self.margin}")
        limit = self.memory_limit
        if limit != "auto" and limit is not None and (isinstance(limit, str) or limit < 1):
            raise UsageError(f"memory_limit must be bytes >= 1, None or 'auto', got {limit!r}")


class Inpainter:
    """Inpaint uint8 images with any backend; the class a service embeds (numpy + onnxruntime only).

    >>> inpainter = Inpainter.from_path("model.onnx", InpaintOptions(strategy="crop"))
    >>> [result] = inpainter.inpaint([image], [hole_mask])   # hole_mask: True / nonzero = hole

    ``options.inflight`` batches run at once (threads) against a thread-safe backend, e.g. a remote
    server; 1 is right for a local CPU or GPU backend, which uses every core on one batch already.
    """

    def __init__(self, backend: Backend, options: InpaintOptions | None = None) -> None:
        self.backend = backend
        self.options = options = options or InpaintOptions()
        self.multiple = int(backend.multiple)
        max_batch = getattr(backend, "max_batch", None)
        self.batch_size = min(options.batch_size, max_batch) if max_batch else options.batch_size
        self.strategy, self.margin, self.inflight = options.strategy, options.margin, options.inflight
        # The network never sees more than max_side, rounded up to the multiple it needs anyway.
        self.max_side = max(self.multiple, options.max_side)
        self.bytes_per_pixel = int(
            getattr(backend, "bytes_per_pixel", 0) or activation_bytes_per_pixel(backend.metadata)
        )
        limit = options.memory_limit
        self.memory_limit = default_memory_limit() if limit == "auto" else limit
        self.inference_budget = inference_budget(self.memory_limit)  # bytes for backend calls, shared by inflight
        budget = self.inference_budget
        self.max_batch_pixels = None if budget is None else call_pixels(budget // self.inflight, self.bytes_per_pixel)
        if hasattr(backend, "keep_bytes"):  # ONNX Runtime's CPU arena: buffers kept between equal calls
            backend.keep_bytes = None if budget is None else budget // KEEP_SHARE

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        options: InpaintOptions | None = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        precision: str = "auto",
    ) -> Inpainter:
        """Load an ONNX model, a TensorRT engine or (with torch installed) a checkpoint.

        ``device``: auto | cpu | cuda | cuda:N; ``threads``: the CPU engine's threads; ``precision``: what
        OpenVINO computes in (auto | f32 | bf16 | f16; see ``load_backend``).
        """
        return cls(load_backend(path, backend, device, threads=threads, precision=precision), options)

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fill the holes of each image; returns new uint8 arrays of the same shapes.

        ``images``: uint8 HxWx3 RGB, HxW grey or HxWx4 RGBA (alpha kept); any sizes.
        ``masks``: HxW bool or integer arrays, True / nonzero = HOLE. An image whose mask has no
        hole is returned unchanged (as a copy). Pixels outside holes are byte-identical to the input.
        """
        if len(images) != len(masks):
            raise PConvError(f"got {len(images)} images but {len(masks)} masks")
        jobs = [
            self.plan(image, hole_mask(mask, image.shape[:2], i)) for i, (image, mask) in enumerate(zip(images, masks))
        ]
        fills = iter(self.run_tiles([t for job in jobs for t in job.tiles]))
        return [job.finish([next(fills) for _ in job.tiles]) for job in jobs]

    def plan(self, image: np.ndarray, hole: np.ndarray) -> Job:
        """Cut one image into tiles according to the strategy (``hole``: bool HxW, True = hole)."""
        check_image(image)
        if hole.shape != image.shape[:2] or hole.dtype != bool:
            raise PConvError(f"hole mask must be bool {image.shape[:2]}, got {hole.dtype} {hole.shape}")
        if not hole.any():
            return Job(image, hole)
        rgb = as_rgb(image)
        h, w = hole.shape
        plans = plan_windows(hole, self.margin, self.multiple) if self.strategy == "crop" else [((0, h, 0, w), None)]
        tiles = []
        for (y0, y1, x0, x1), paste in plans:
            native = self.strategy == "full" or max(y1 - y0, x1 - x0) <= self.max_side
            tile = make_tile(rgb, hole, (y0, y1, x0, x1), max_side=None if native else self.max_side, paste=paste)
            self.check_fits(tile)
            tiles.append(tile)
        return Job(image, hole, tuple(tiles))

    def check_fits(self, tile: Tile) -> None:
        """A tile that alone needs more than the memory budget is refused before anything runs."""
        ph, pw = tile.padded_shape(self.multiple)
        if self.max_batch_pixels is None or ph * pw <= self.max_batch_pixels:
            return
        per_call = (self.inference_budget or 0) // self.inflight
        need = CALL_OVERHEAD + ph * pw * self.bytes_per_pixel
        raise PConvError(
            f"inference at {pw}x{ph} needs about {format_bytes(need)}, over the "
            f"{format_bytes(per_call)} one call may use (memory limit {format_bytes(self.memory_limit or 0)}): "
            "use --strategy crop or resize, or raise --memory-limit"
        )

    def batcher(self, max_waiting: int | None = None) -> ShapeBatcher:
        """The batching rule of this inpainter (batch size, memory budget) for a stream of tiles."""
        return ShapeBatcher(self.multiple, self.batch_size, self.max_batch_pixels, max_waiting=max_waiting)

    def run_tiles(self, tiles: Sequence[Tile]) -> list[np.ndarray]:
        """Each tile's fill (see ``crop_fills``), in order: batches of equal padded size, ``inflight`` at a time."""
        batcher: ShapeBatcher[int] = self.batcher()
        batches = [b for i, tile in enumerate(tiles) for b in batcher.add(tile, i)] + batcher.flush()
        if self.inflight == 1 or len(batches) <= 1:
            done = [self.run_batch(b.tiles, b.shape) for b in batches]
        else:
            with ThreadPoolExecutor(self.inflight, thread_name_prefix="pconv-infer") as pool:
                done = [future.result() for future in [pool.submit(self.run_batch, b.tiles, b.shape) for b in batches]]
        fills = {index: fill for batch, found in zip(batches, done) for index, fill in zip(batch.owners, found)}
        return [fills[i] for i in range(len(tiles))]

    def run_batch(self, tiles: Sequence[Tile], shape: tuple[int, int]) -> list[np.ndarray]:
        """One backend call: pad every tile to ``shape`` (mirroring image and mask), run, crop the fills back."""
        return self.crop_fills(tiles, self.call(*self.pad_batch(tiles, shape)))

    def pad_batch(self, tiles: Sequence[Tile], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The backend's inputs for ``tiles``: [N,3,H,W] in [0, 1] with holes zeroed, [N,1,H,W] 1 = known.

        Written in place into the batch arrays (a tile that needs no padding is never copied whole again):
        ~3x faster than padding each tile with np.pad, which is run serially with the backend otherwise.
        """
        ph, pw = shape
        image = np.empty((len(tiles), 3, ph, pw), np.float32)
        mask = np.empty((len(tiles), 1, ph, pw), np.float32)
        for i, tile in enumerate(tiles):
            h, w = tile.hole.shape
            known = ~tile.hole
            np.multiply(tile.rgb.transpose(2, 0, 1), np.float32(1 / 255), out=image[i, :, :h, :w])
            image[i, :, :h, :w] *= known  # holes carry no information into the network
            mask[i, 0, :h, :w] = known
            if (h, w) != (ph, pw):  # mirror into the padding, as np.pad's "symmetric"
                pad = ((0, 0), (0, ph - h), (0, pw - w))
                image[i] = np.pad(image[i, :, :h, :w], pad, mode="symmetric")
                mask[i] = np.pad(mask[i, :, :h, :w], pad, mode="symmetric")
        return image, mask

    def call(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The backend on one padded batch, its output checked (shape, finite)."""
        out = self.backend.run(image, mask)
        if out.shape != image.shape:
            raise PConvError(f"backend {self.backend.name} returned shape {out.shape} for input {image.shape}")
        if not np.isfinite(out).all():  # NaN weights or an FP16 overflow: the holes would silently turn black
            raise PConvError(f"the model returned NaN or infinite values ({self.backend.name}): its weights are broken")
        return out

    def crop_fills(self, tiles: Sequence[Tile], out: np.ndarray) -> list[np.ndarray]:
        """Each tile's fill cropped out of the backend's output, as ``Job.finish`` takes it.

        Native tiles are quantised now (uint8: 3 bytes a pixel while waiting to be written, not 12); a
        downscaled tile stays float32 in [0, 1], upscaled before quantising in ``Job.finish``.
        """
        fills = []
        for i, tile in enumerate(tiles):
            h, w = tile.hole.shape
            fill = out[i, :, :h, :w].transpose(1, 2, 0)
            fills.append(np.ascontiguousarray(fill) if tile.resized else to_uint8(fill))
        return fills


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise PConvError(f"images must be uint8 numpy arrays, got {dtype} (16-bit images: convert to 8-bit first)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape[:2]:
        raise PConvError(f"images must be HxW, HxWx3 or HxWx4 and non-empty, got shape {image.shape}")


def as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def hole_mask(mask: np.ndarray, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """A numpy-API mask (True / nonzero = hole, HxW or HxWx1) as a bool array, checked against the image."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise PConvError(f"mask {index} has shape {mask.shape}, its image is {tuple(shape)}")
    return mask != 0
