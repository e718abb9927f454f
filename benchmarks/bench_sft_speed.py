"""SFT training speed on this machine: the plain path against eager attention, bf16 autocast and top-N-layer LoRA
with cached lower layers, same batch.

SmolLM2-135M-Instruct (full fine-tune, or LoRA on the top layers) on one fixed batch of real SciFact train pairs (each
with one other pair's positive as its hard negative), sequences capped at --max-length tokens. Each variant runs a
warm-up step (which also fills the lower-layer cache) and then --steps forward+backward passes; it reports tokens/s
and the loss of the fixed batch before any update, which must agree across variants (LoRA starts as the identity).

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_sft_speed.py [--pairs ../shared/data/train/scifact_train_pairs.jsonl]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from searchr3_eval.atomic import atomic_write_json
from trainer.config import LossWeights, SFTConfig
from trainer.data import Triple
from trainer.modeling import Policy
from trainer.sft import sft_losses

VARIANTS = {
    "plain (float32, sdpa, KL on)": {"mixed_precision": "no", "attn_implementation": "sdpa", "kl": 0.1},
    "eager attention": {"mixed_precision": "no", "attn_implementation": "eager", "kl": 0.1},
    "eager + bf16 autocast": {"mixed_precision": "bf16", "attn_implementation": "eager", "kl": 0.1},
    "eager + bf16 autocast, KL off": {"mixed_precision": "bf16", "attn_implementation": "eager", "kl": 0.0},
    # LoRA on the top N layers only; the frozen lower layers' outputs are computed in the warm-up step and cached
    "LoRA top 8 layers, lower 22 cached, bf16, KL on": {"mixed_precision": "bf16", "attn_implementation": "eager",
                                                       "kl": 0.1, "lora": True, "train_layers": 8},
    "LoRA top 4 layers, lower 26 cached, bf16, KL off": {"mixed_precision": "bf16", "attn_implementation": "eager",
                                                        "kl": 0.0, "lora": True, "train_layers": 4},
}


def fixed_batch(path: Path, size: int) -> list[Triple]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:size]]
    return [Triple(r["query"], r["positive"], [rows[(i + 1) % size]["positive"]]) for i, r in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/train/scifact_train_pairs.jsonl"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="variant names to run besides the plain baseline (default: all)")
    parser.add_argument("--out", default="results/benchmarks/sft_speed.json")
    args = parser.parse_args()
    batch = fixed_batch(args.pairs, args.batch_size)
    rows = {}
    baseline = next(iter(VARIANTS))
    for name, v in VARIANTS.items():
        if args.only and name != baseline and name not in args.only:
            continue
        torch.manual_seed(0)
        policy = Policy("smollm2", max_length=args.max_length, mixed_precision=v["mixed_precision"],
                        attn_implementation=v["attn_implementation"], lora=v.get("lora", False),
                        train_layers=v.get("train_layers"), lora_r=16, lora_alpha=32)
        cfg = SFTConfig(model="smollm2", output_dir="unused", max_length=args.max_length, weights=LossWeights(kl=v["kl"]))
        policy.model.train()
        terms, _ = sft_losses(policy, batch, cfg)  # warm-up, and the fixed batch's loss before any update
        loss = {k: round(terms[k].item(), 4) for k in ("sft", "infonce", "triplet", "kl")}
        terms["total"].backward()
        policy.model.zero_grad(set_to_none=True)
        tokens, start = 0, time.perf_counter()
        for _ in range(args.steps):
            terms, n = sft_losses(policy, batch, cfg)
            terms["total"].backward()
            policy.model.zero_grad(set_to_none=True)
            tokens += n
        seconds = time.perf_counter() - start
        rows[name] = {"tokens_per_second": round(tokens / seconds, 1), "seconds_per_step": round(seconds / args.steps, 2),
                      "loss_terms": loss}
        print(name, rows[name], flush=True)
    base = rows[baseline]["tokens_per_second"]
    for row in rows.values():
        row["speedup"] = round(row["tokens_per_second"] / base, 2)
    atomic_write_json(args.out, {"benchmark": "SFT forward+backward, SmolLM2-135M-Instruct",
                                 "batch": f"{args.batch_size} triples (query, positive, 1 negative)",
                                 "max_length": args.max_length, "threads": torch.get_num_threads(), "variants": rows})


if __name__ == "__main__":
    main()
