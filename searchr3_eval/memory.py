"""Process memory: an allocator that reuses freed tensor memory without letting the heap grow.

A command line first restarts itself with tcmalloc preloaded where it is installed (Debian/Ubuntu:
``apt install libtcmalloc-minimal4``); without it, training sets glibc to give large blocks back
(``return_freed_memory``) and evaluation keeps glibc's default. Measured on 2 CPU cores (benchmarks/bench_allocator.py):
SFT steps 1.74x and encoding 1.50x faster with tcmalloc than with that glibc setting, at the same peak memory; glibc's
default is 1.56x and 1.43x, with 1.6x the peak memory of SFT (growing). An evaluation's memory does not grow that way:
the default task's Search-R3 run spent 32% of its CPU in the kernel under the setting and 3% under glibc's default,
at 1.05x the peak memory (benchmarks/bench_eval_allocator.py)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 64 * 1024
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
NO_TCMALLOC_ENV = "SEARCHR3_NO_TCMALLOC"  # set to 1 to keep glibc's allocator


def tcmalloc_library() -> str | None:
    """The installed tcmalloc's library name, or None (also off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return next(filter(None, map(ctypes.util.find_library, TCMALLOC_LIBRARIES)), None)


def tcmalloc_in_use() -> bool:
    return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def restart_with_tcmalloc() -> None:
    """Re-execute this command (same process id, arguments and environment) with tcmalloc preloaded; returns without
    doing so where it is not installed, ``SEARCHR3_NO_TCMALLOC`` is set, or ``LD_PRELOAD`` is already set (the user's
    choice, or this restart's). Call it first thing in a command line's ``main``: nothing before it runs twice."""
    if os.environ.get("LD_PRELOAD") or os.environ.get(NO_TCMALLOC_ENV) or (library := tcmalloc_library()) is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": library})
    except OSError:  # keep running on glibc
        return


def return_freed_memory() -> bool:
    """On glibc, serve every allocation of 64 KiB or more with its own mmap, so freeing a tensor returns its memory.

    glibc's default threshold rises (up to 32 MiB) as large blocks are freed; after that, tensors of ever-changing
    shapes (batches of varying length) are carved from the heap and fragment it. Measured on reasoning-format SFT
    (results/README.md): resident memory 7.7 GB after 4 steps with the default and 1.2 GB with this; the full run was
    killed at 24 GB. The price is a fresh page for every large tensor (about 40% of the CPU time of an SFT step in the
    kernel), which tcmalloc avoids. Returns whether the setting took effect (False off glibc or under tcmalloc)."""
    if not sys.platform.startswith("linux") or tcmalloc_in_use():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def configure_command_line(training: bool) -> str:
    """The allocator for a command run from the shell: tcmalloc where installed; else, for training, glibc returning
    freed memory (bounded memory over thousands of differently shaped steps), and for evaluation glibc's default
    (the setting's fresh pages cost an evaluation a third of its CPU). Not for a ``main(argv)`` called inside another
    program (the settings are process-wide). Returns which it chose."""
    restart_with_tcmalloc()
    if tcmalloc_in_use():
        return "tcmalloc"
    return "glibc returning freed memory" if training and return_freed_memory() else "glibc default"
