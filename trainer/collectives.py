"""Collectives of the training processes (``accelerate launch`` / ``torchrun``; process group from
``searchr3_eval.distributed.init_from_env``): each process takes an equal share of every global batch, losses that
need the whole batch gather its rows, gradients are averaged, logged values are means across processes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from searchr3_eval.distributed import local_rank, rank_and_size


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
    """Mean of each gradient across ranks (what DDP does, for forwards that do not go through a DDP wrapper), in one
    all-reduce of all gradients flattened together."""
    if not dist.is_initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


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
