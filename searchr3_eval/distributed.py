"""Runs launched with ``torchrun`` or ``accelerate launch``: the process group comes from accelerate; evaluation ranks
encode a share of the batches and rank 0 gathers, searches, scores and writes (the trainer's own collectives are in
``trainer.collectives``). Without a launcher (one process) nothing here does anything."""
from __future__ import annotations

import os
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


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
