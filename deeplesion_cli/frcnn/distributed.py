"""Training on several processes under ``torchrun``: which rank this process is, and the few
collective calls the training loop makes.

A plain ``python``/``lesion`` process is rank 0 of 1 and every helper here is then a no-op that
returns its input, so the loop is written once for both cases. Under ``torchrun`` every rank joins
one process group (NCCL on CUDA, gloo on the CPU), the model is wrapped in
``DistributedDataParallel``, and rank 0 alone writes files; the others reach it through
:func:`all_reduce_sum` (loss sums, counts), :func:`gather` (detections) and :func:`broadcast`
(metrics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0             # rank on this machine: the CUDA device it trains on
    launched: bool = False          # started by torchrun (even as its only rank)

    @property
    def enabled(self) -> bool:
        """Whether to join a process group and wrap the model in DDP: several ranks, or one
        rank started by torchrun (so that ``torchrun --nproc_per_node 1`` checks the NCCL/gloo
        path on a single device)."""
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (a plain run: rank 0 of 1);
    ``launched`` when torchrun set them (``TORCHELASTIC_RUN_ID`` is torchrun's own mark)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)),
                launched="TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ)


def rank_device(device: torch.device, dist_info: Dist) -> torch.device:
    """The device this rank trains on: under DDP each rank takes CUDA device ``local_rank``
    (made current); otherwise ``device`` itself."""
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


def init_process_group(dist_info: Dist, device: torch.device) -> None:
    """Join the ranks' process group (NCCL for CUDA, gloo for the CPU) unless already joined."""
    import torch.distributed as dist

    if dist_info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def destroy_process_group(dist_info: Dist) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def backend_name() -> str:
    """The process group's backend (``nccl``/``gloo``), for the log."""
    import torch.distributed as dist

    return dist.get_backend()


def wrap_model(model, device: torch.device, dist_info: Dist):
    """``model`` in ``DistributedDataParallel`` when several ranks train, else ``model``; the
    unwrapped ``model`` stays the one saved and evaluated."""
    if not dist_info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], device, dist_info: Dist) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64), on every rank."""
    if not dist_info.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj, dist_info: Dist) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, dist_info: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not dist_info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist_info: Dist) -> None:
    """Wait for every rank (after rank 0 wrote an epoch's files)."""
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()
