"""Seconds per query-side GRPO step (a query adapter against its document model's frozen index), split into
generation, the rollouts' embedding forward and the update, with generation under bf16 autocast (the trainer's
default where the CPU computes bf16 natively) and in float32 side by side; and the within-group reward spread
(GRPO learns only from differences inside a group: 0 means no advantage at all) and the share of rollouts that are
only the direct phrase.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_query_rl.py --model runs/query-sft-smollm2/final \
           --beir-dir ../shared/data/beir/scifact [--steps 2] [--group-size 8] [--batch-size 4] [--max-new-tokens 32]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.models.lm.device import cpu_has_native_bf16
from searchr3_eval.models.lm.generate import direct_phrase
from trainer.config import RLConfig
from trainer.rl import RetrievalGRPO, beir_training_set, is_bare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/query-sft-smollm2/final")
    parser.add_argument("--beir-dir", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--steps", type=int, default=2, help="steps timed per variant")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", default="results/benchmarks/query_rl_step.json")
    args = parser.parse_args()
    triples, corpus = beir_training_set(args.beir_dir, "train")
    cfg = RLConfig(model=args.model, output_dir=tempfile.mkdtemp(), lora=True, train_layers=8, max_length=352,
                   query_adapter=True, group_size=args.group_size, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, kl_beta=0.0, learning_rate=1e-5)
    trainer = RetrievalGRPO(cfg, triples, corpus)
    tokenizer, phrase = trainer.policy.tokenizer, direct_phrase(trainer.policy.format.prompts.direct_answer)
    rng = np.random.default_rng(0)
    variants = {"bf16 autocast": True, "float32": False} if cpu_has_native_bf16() else {"float32": False}
    result = {}
    for name, autocast in variants.items():
        trainer.policy.bf16_autocast = autocast
        steps, bare = [], []
        for _ in range(args.steps):
            rows = rng.choice(len(triples), cfg.batch_size, replace=False)
            batch = [triples[i] for i in rows]
            rollouts = trainer.rollout([t.query for t in batch[:1]], 2)  # warm-up and a look at the analyses
            bare += [is_bare(tokenizer.decode(a, skip_special_tokens=True), phrase) for a in rollouts.actions]
            steps.append(trainer.step(batch, [corpus.positive_ids[i] for i in rows]))
            print(name, {k: round(v, 3) for k, v in steps[-1].items()}, flush=True)
        mean = {k: float(np.mean([s[k] for s in steps])) for k in steps[0]}
        result[name] = {
            "generation_seconds": round(mean["generation_seconds"], 2),
            "embedding_seconds": round(mean["rollout_seconds"] - mean["generation_seconds"], 2),
            "update_seconds": round(mean["update_seconds"], 2),
            "step_seconds": round(mean["rollout_seconds"] + mean["update_seconds"], 2),
            "reward_spread": round(mean["reward_spread"], 4), "mean_rr": round(mean["mean_rr"], 4),
            "bare_share (sampled analyses that say nothing: trainer.rl.is_bare)": round(float(np.mean(bare)), 3),
        }
    if len(result) == 2:
        result["float32 / bf16 step seconds"] = round(result["float32"]["step_seconds"]
                                                      / result["bf16 autocast"]["step_seconds"], 2)
    report = {
        "benchmark": "query-side GRPO step (frozen document index), generation precision side by side",
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_query_rl.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, native bf16: "
                   f"{cpu_has_native_bf16()}",
        "goal": "<= 30 s a step for group 8, 4 queries, 32 new tokens",
        "index_seconds (the frozen index: from the embedding cache when the evaluation has run)":
            round(trainer.env.initial_refresh.seconds, 1),
        **result,
    }
    print(report)
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
