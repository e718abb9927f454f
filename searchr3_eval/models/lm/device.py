"""Where a model runs and in which float type: ``auto`` resolved to this machine's GPU or CPU, and to bfloat16 where
the device computes it natively."""
from __future__ import annotations

import logging
import os
import re
from functools import cache
from pathlib import Path

import torch

from searchr3_eval.distributed import local_rank
from searchr3_eval.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
log = logging.getLogger(__name__)


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX), where bf16 runs ~2.5x float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> str:
    """``auto``: the GPU when one is present (CUDA, then Apple MPS), else ``cpu``; a missing device is a UserError.
    Under ``torchrun`` with CUDA, ``auto`` and ``cuda`` mean this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return resolve_device(f"cuda:{local_rank()}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available here")
    return device


@cache
def check_bf16_on(device: str) -> None:
    """Warn (once a process) when bfloat16 is chosen explicitly for a CPU without native bf16."""
    if device == "cpu" and not cpu_has_native_bf16():
        log.warning("bfloat16 on this CPU (no AVX512-BF16 or AMX) is emulated: measured 7x slower than float32 on "
                    "such a CPU; the 'auto' choice is float32 here")


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """``auto``: bfloat16 on a GPU that supports it or a CPU with native bf16, else float32."""
    if dtype == "bfloat16":
        check_bf16_on(device)
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
