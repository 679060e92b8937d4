"""torchrun support: the same `pconv train` command runs on one process or many.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process. CPU uses
the gloo backend, CUDA nccl (one GPU per local rank).

BatchNorm: each rank normalises with its own batch's statistics and DDP broadcasts rank 0's
running statistics at every forward, as in the usual multi-GPU setup. SyncBatchNorm would
pool statistics across ranks, but it only runs on GPUs; with the per-rank batch of 2+ that
the model already requires, per-rank statistics are what single-GPU training of the paper had.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Read torchrun's environment; join the process group when there is more than one process.

    Device: CUDA GPU ``LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
    return Dist(rank, world_size, local_rank, device)


def teardown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wait_for_all(d: Dist) -> None:
    """Let the ranks leave together: a rank exiting while the main one still saves aborted in gloo's teardown
    ("terminate called without an active exception", about a third of 2-process runs here)."""
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def mean_across_ranks(values, d: Dist):
    """Average a 1-D float tensor over all ranks (for logging the loss of the global batch)."""
    if not d.enabled:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / d.world_size


def parameter_digest(model) -> str:
    """sha256 of all parameters' bytes in order: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_strings(text: str, d: Dist) -> list[str]:
    """Every rank's ``text``, in rank order (for checking that ranks agree)."""
    if not d.enabled:
        return [text]
    import torch.distributed as dist

    out: list[str | None] = [None] * d.world_size
    dist.all_gather_object(out, text)
    return [str(s) for s in out]
