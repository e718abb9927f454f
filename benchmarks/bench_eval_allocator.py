"""Kernel CPU of an evaluation without tcmalloc, under three glibc settings, side by side: the 64 KiB mmap threshold
that bounds training's memory (every large tensor gets fresh pages), glibc's default (a threshold that rises as large
blocks are freed) and a fixed 32 MiB threshold. Each runs the default task's Search-R3 evaluation in its own process
from scratch (no embedding cache), measured with wait4's resource usage: user and system CPU, minor page faults, peak RSS.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_eval_allocator.py [--models searchr3:smollm2-sft]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.memory import NO_TCMALLOC_ENV
from searchr3_eval.models.lm.device import cpu_has_native_bf16

SETTINGS = {
    "glibc 64 KiB threshold (training's setting)": ("threshold-64k", {}),
    "glibc default (dynamic threshold)": ("default", {}),
    "glibc fixed 32 MiB threshold": ("default", {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432"}),
}


def worker(mode: str, argv: list[str]) -> None:
    if mode == "threshold-64k":
        from searchr3_eval.memory import return_freed_memory

        assert return_freed_memory()
    from searchr3_eval.cli import run_command

    sys.exit(run_command(argv))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="searchr3:smollm2-sft")
    parser.add_argument("--out", default="results/benchmarks/eval_allocator.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return
    rows = {}
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    env[NO_TCMALLOC_ENV] = "1"
    for label, (mode, extra) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["run", "--models", args.models, "--output-dir", tmp, "--no-cache", "--quiet"]
            start = time.perf_counter()
            child = subprocess.Popen([sys.executable, __file__, "--worker", mode, json.dumps(argv)], env={**env, **extra})
            _, status, usage = os.wait4(child.pid, 0)  # this child's own usage (peak RSS included)
            assert os.waitstatus_to_exitcode(status) == 0, label
            user, system = usage.ru_utime, usage.ru_stime
            score = json.loads(next(Path(tmp, "runs").glob("*/*.json")).read_text())["scores"]["ndcg_at_10"]
        rows[label] = {"wall_seconds": round(time.perf_counter() - start, 1), "user_seconds": round(user, 1),
                       "system_seconds": round(system, 1), "kernel_share": round(system / (user + system), 3),
                       "minor_faults": usage.ru_minflt, "peak_rss_mib": round(usage.ru_maxrss / 1024),
                       "ndcg_at_10": round(score, 4)}
        print(label, rows[label], flush=True)
        write(args, rows)


def write(args: argparse.Namespace, rows: dict) -> None:
    """The settings measured so far (rewritten after each, so a stopped run keeps what it measured)."""
    atomic_write_json(args.out, {
        "benchmark": f"{args.models} on GSM8KRetrieval from scratch without tcmalloc, one process per glibc setting",
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_eval_allocator.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}",
        "goal": "under 15% of the evaluation's CPU in the kernel", "settings": rows})


if __name__ == "__main__":
    main()
