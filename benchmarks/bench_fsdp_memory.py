"""What FSDP saves per process: a full fine-tune of SmolLM2-135M-Instruct (with its frozen KL reference) on 2
processes, DDP-style (every process holds everything) against FSDP2 (``accelerate launch --use_fsdp --fsdp_version 2``),
side by side in one run.

Each process runs one SFT step on the same global batch of real SciFact train pairs and reports the bytes it holds in
parameters (policy and reference), gradients and optimiser state (its own shards under FSDP), its peak resident memory,
and the step's time and loss; the losses of both modes must agree.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_fsdp_memory.py [--pairs ../shared/data/train/scifact_train_pairs.jsonl]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_sft_speed import fixed_batch  # the same batch of real pairs as the SFT speed benchmark

from searchr3_eval import distributed
from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.models.lm.device import cpu_has_native_bf16
from trainer import collectives, sharding
from trainer.config import LossWeights, SFTConfig
from trainer.modeling import Policy
from trainer.sft import sft_losses

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
MODES = {"DDP-style (gradients averaged)": ["--multi_gpu"], "FSDP2": ["--use_fsdp", "--fsdp_version", "2"]}


def local_bytes(tensors) -> int:
    """Bytes this process holds of ``tensors`` (a sharded tensor counts its local shard)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors)


def worker(args: argparse.Namespace) -> None:
    """One process of one mode: build, (shard,) one step, report."""
    plugin = sharding.fsdp_plugin()
    distributed.init_from_env()
    rank, size = distributed.rank_and_size()
    batch = fixed_batch(args.pairs, args.batch_size)
    torch.manual_seed(0)
    policy = Policy("smollm2", max_length=args.max_length, mixed_precision="no")
    if plugin is not None:
        policy.shard(plugin)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    cfg = SFTConfig(model="smollm2", output_dir="unused", max_length=args.max_length, weights=LossWeights(kl=0.1))
    start = time.perf_counter()
    policy.model.train()
    terms, _ = sft_losses(policy, collectives.shard_of(batch, rank, size), cfg)
    terms["total"].backward()
    policy.average_gradients(trainable)
    optimizer.step()
    seconds = time.perf_counter() - start
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    report = {"parameters_mib": local_bytes(policy.model.parameters()) / 2**20,
              "reference_mib": local_bytes(policy.reference.parameters()) / 2**20,
              "gradients_mib": local_bytes(p.grad for p in trainable) / 2**20,
              "optimizer_state_mib": local_bytes(state) / 2**20,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "step_seconds": seconds, "loss": collectives.mean_across_ranks({"total": terms["total"].item()})["total"]}
    reports = distributed.gather_to_main({k: round(v, 4 if k == "loss" else 1) for k, v in report.items()})
    if rank == 0:
        args.report.write_text(json.dumps(reports))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/train/scifact_train_pairs.jsonl"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--out", default="results/benchmarks/fsdp_memory.json")
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)  # set on the launched processes
    args = parser.parse_args()
    if args.report is not None:
        return worker(args)
    modes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in MODES.items():
            report = Path(tmp) / "report.json"
            command = [*LAUNCH, *flags, __file__, "--pairs", str(args.pairs), "--batch-size", str(args.batch_size),
                       "--max-length", str(args.max_length), "--report", str(report)]
            subprocess.run(command, check=True, capture_output=True)
            modes[name] = {"processes": json.loads(report.read_text())}
            print(name, modes[name], flush=True)
    ddp, fsdp = ({k: max(p[k] for p in m["processes"]) for k in m["processes"][0]} for m in modes.values())
    held = ("parameters_mib", "reference_mib", "gradients_mib", "optimizer_state_mib")
    atomic_write_json(args.out, {
        "benchmark": "one SFT step of a full fine-tune (KL reference on), SmolLM2-135M-Instruct, 2 processes",
        "command": f"HF_HUB_OFFLINE=1 python benchmarks/bench_fsdp_memory.py --batch-size {args.batch_size} "
                   f"--max-length {args.max_length}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, gloo",
        "ratios": "FSDP2 / DDP-style, the larger of the two processes' values",
        "batch": f"{args.batch_size} SciFact train pairs (query, positive, another pair's positive as negative)",
        "modes": modes,
        "fsdp_vs_ddp_held_tensors": round(sum(fsdp[k] for k in held) / sum(ddp[k] for k in held), 3),
        "fsdp_vs_ddp_peak_rss": round(fsdp["peak_rss_mib"] / ddp["peak_rss_mib"], 3),
        "fsdp_vs_ddp_step_time": round(fsdp["step_seconds"] / ddp["step_seconds"], 3),
    })


if __name__ == "__main__":
    main()
