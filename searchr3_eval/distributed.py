"""Runs launched with ``torchrun`` or ``accelerate launch``: the process group comes from accelerate; evaluation ranks
encode a share of the batches and rank 0 gathers, searches, scores and writes; training ranks split each global
batch and average gradients. Without a launcher (one process) nothing here does anything."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group the launcher describes (WORLD_SIZE > 1) through accelerate: NCCL with each rank on
    its own GPU where CUDA is present, else gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main() -> bool:
    return rank_and_size()[0] == 0


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(value: Any) -> list[Any]:
    """Every rank's ``value`` (in rank order) on rank 0; an empty list on the other ranks."""
    if not dist.is_initialized():
        return [value]
    rank, size = rank_and_size()
    gathered: list[Any] = [None] * size if rank == 0 else []
    dist.gather_object(value, gathered if rank == 0 else None, dst=0)
    return gathered


def shard_of(items: list, rank: int, size: int) -> list:
    """The ``rank``-th of ``size`` contiguous, equal shares of ``items`` (the global batch must divide evenly)."""
    if len(items) % size:
        raise ValueError(f"a batch of {len(items)} does not split evenly across {size} processes")
    share = len(items) // size
    return items[rank * share : (rank + 1) * share]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` in rank order, with gradients flowing back to each rank's own rows (ranks may hold
    different numbers of rows). Computing the same loss on every rank and averaging gradients then equals one
    process's gradient on the whole batch."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
    most = int(max(counts))
    padded = torch.cat([x, x.new_zeros(most - len(x), *x.shape[1:])])
    return torch.cat([part[: int(n)] for part, n in zip(all_gather(padded), counts)])


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Mean of each gradient across ranks (what DDP does, for forwards that do not go through a DDP wrapper)."""
    if not dist.is_initialized():
        return
    size = dist.get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, total)}


def all_gather_list(values: list) -> list:
    """Every rank's ``values`` concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return list(values)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


def map_sharded(encode: Callable[[list], torch.Tensor], items: list) -> torch.Tensor:
    """``encode`` over every world-size-th item on each rank; every rank gets all rows, in ``items``' order. Every
    rank calls ``encode``, with an empty list where it has no items (a sharded model runs its layers on every rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return encode(items)
    rank, size = rank_and_size()
    mine = items[rank::size]
    encoded = encode(mine)
    parts = all_gather_list([encoded.float().cpu() if mine else None])
    width = next(p.shape[1] for p in parts if p is not None)
    out = torch.empty(len(items), width)
    for r, part in enumerate(parts):
        if part is not None:
            out[r::size] = part
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
