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

from deeplesion_cli.spec.core import OptionError
from deeplesion_cli.spec.frcnn import parse_device


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0             # rank on this machine: the CUDA device it trains on
    launched: bool = False          # started by torchrun (even as its only rank)
    local_world_size: int = 1       # ranks on this machine

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
                launched="TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ,
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _no_cuda(text: str) -> OptionError:
    build = ("a CPU-only build" if torch.version.cuda is None
             else f"built for CUDA {torch.version.cuda}")
    return OptionError(f"--device {text}: this machine has no GPU that torch can use "
                       f"(torch.cuda.is_available() is False; torch {torch.__version__} is "
                       f"{build}); use --device cpu (or auto)", "device")


def device_for_rank(text: str, dist_info: Dist) -> torch.device:
    """The device this process runs on for ``--device`` ``text`` (checked before anything is
    loaded; :class:`OptionError` naming the valid forms otherwise).

    ``auto``: CUDA when present, else the CPU. ``N`` means ``cuda:N``. Under DDP each rank takes
    CUDA device ``local_rank`` for ``auto``/``cuda``, or the ``local_rank``-th of a list
    (``--device 2,3``), and makes it current; a single index with several ranks on the machine,
    a list without torchrun, or an index this machine lacks are errors saying what to give."""
    try:
        kind, indices = parse_device(text)
    except ValueError as exc:
        raise OptionError(f"--device {exc}", "device") from None
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if len(indices) > 1 and not dist_info.enabled:
        raise OptionError(
            f"--device {text}: one process runs on one GPU; to train on {len(indices)} GPUs start "
            f"one process per GPU: torchrun --nproc_per_node {len(indices)} -m deeplesion_cli "
            f"train frcnn ... --device {text} (or give one index)", "device")
    if not torch.cuda.is_available():
        raise _no_cuda(text)
    index = indices[0] if indices else None
    if dist_info.enabled:
        local = dist_info.local_world_size
        if len(indices) > 1 or (len(indices) == 1 and local == 1):
            if len(indices) < local:
                raise OptionError(f"--device {text} lists {len(indices)} GPU(s) for the {local} "
                                  "torchrun ranks on this machine: give one index per rank",
                                  "device")
            index = indices[dist_info.local_rank]
        elif indices:
            raise OptionError(f"--device {text}: torchrun started {local} ranks on this "
                              "machine and each needs its own GPU: give one index per rank "
                              f"(--device {','.join(str(i) for i in range(local))}) or cuda",
                              "device")
        else:
            index = dist_info.local_rank
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise OptionError(f"--device {text}: there is no CUDA device {index} (this machine has "
                          f"{count}: {', '.join(str(i) for i in range(count))})", "device")
    device = torch.device("cuda", index) if index is not None else torch.device("cuda")
    if dist_info.enabled:
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
