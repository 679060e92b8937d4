"""Batching tiles by padded shape: the one piece of code both ``Inpainter.run_tiles`` and the folder job use.

A backend call needs one shape for the whole batch, so tiles wait in a bucket per padded shape until
the bucket is full. "Full" is the smaller of ``batch_size`` and what fits the memory budget
(``max_batch_pixels`` padded pixels per call), so a batch of 12 MP tiles is smaller than a batch of
crops. With ``max_waiting`` set, the fullest bucket runs early when too many tiles wait (a folder of
many different sizes must not hold them all).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pconv_deploy.runtime.tiles import Tile

Owner = TypeVar("Owner", bound=Hashable)


@dataclass
class Batch(Generic[Owner]):
    """Tiles of one padded ``shape`` for one backend call, each with the owner it belongs to."""

    shape: tuple[int, int]
    tiles: list[Tile] = field(default_factory=list)
    owners: list[Owner] = field(default_factory=list)


class ShapeBatcher(Generic[Owner]):
    """``add`` tiles, get back the batches that became full; ``flush`` returns the rest."""

    def __init__(
        self, multiple: int, batch_size: int, max_batch_pixels: int | None = None, *, max_waiting: int | None = None
    ) -> None:
        self.multiple, self.batch_size = multiple, batch_size
        self.max_batch_pixels, self.max_waiting = max_batch_pixels, max_waiting
        self.buckets: dict[tuple[int, int], Batch[Owner]] = {}
        self.waiting = 0

    def capacity(self, shape: tuple[int, int]) -> int:
        """Tiles of ``shape`` per backend call: batch_size, fewer when the memory budget says so (never 0)."""
        if self.max_batch_pixels is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.max_batch_pixels // (shape[0] * shape[1])))

    def add(self, tile: Tile, owner: Owner) -> list[Batch[Owner]]:
        shape = tile.padded_shape(self.multiple)
        bucket = self.buckets.setdefault(shape, Batch(shape))
        bucket.tiles.append(tile)
        bucket.owners.append(owner)
        self.waiting += 1
        ready = []
        if len(bucket.tiles) >= self.capacity(shape):
            ready.append(self.take(shape))
        while self.max_waiting is not None and self.waiting > self.max_waiting:  # many sizes: run partial batches
            ready.append(self.take(max(self.buckets, key=lambda s: len(self.buckets[s].tiles))))
        return ready

    def flush(self) -> list[Batch[Owner]]:
        batches = []
        while self.buckets:
            batches.append(self.take(next(iter(self.buckets))))
        return batches

    def take(self, shape: tuple[int, int]) -> Batch[Owner]:
        """Remove and return up to one batch's worth of ``shape``'s bucket."""
        bucket = self.buckets[shape]
        n = self.capacity(shape)
        batch = Batch(shape, bucket.tiles[:n], bucket.owners[:n])
        del bucket.tiles[:n], bucket.owners[:n]
        if not bucket.tiles:
            del self.buckets[shape]
        self.waiting -= len(batch.tiles)
        return batch
