"""The RL environment over a real corpus: per-step refresh cost against a full re-encode, and agreement with a freshly
encoded index on what the reward uses (the rank of the positive that each audited step's rollouts were rewarded
with) and, for the index as it stands, on the positive's rank and the top 10 of direct train queries.

The policy trains LoRA on the top ``--train-layers`` layers, so the documents' frozen lower layers are computed once
(part of the initial index) and every refresh, partial or full, re-runs only the top layers. Costs are compared with a
full refresh through that cache and with a full re-encode through all layers (the initial index, which computes every
layer for every document). Queries and positives are the folder's train qrels.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_trainer.py --model runs/sft-smollm2/final \
           --beir-dir ../shared/data/beir/scifact [--steps 5] [--queries 200] [--rank-band 0.01] [--audit-every 1]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from searchr3_eval.atomic import atomic_write_json
from trainer.config import RLConfig
from trainer.rl import RetrievalGRPO, beir_training_set


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/sft-smollm2/final")
    parser.add_argument("--beir-dir", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--train-layers", type=int, default=8)
    parser.add_argument("--max-document-length", type=int, default=352)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--refresh-every", type=int, default=20)
    parser.add_argument("--rank-band", type=float, default=0.01)
    parser.add_argument("--audit-every", type=int, default=1,
                        help="audit the rewarded ranks every this many steps (a full refresh each)")
    parser.add_argument("--queries", type=int, default=200, help="train queries whose rankings are compared")
    parser.add_argument("--out", default="results/benchmarks/environment.json")
    args = parser.parse_args()
    triples, corpus = beir_training_set(args.beir_dir, "train")
    cfg = RLConfig(model=args.model, output_dir=tempfile.mkdtemp(), lora=True, train_layers=args.train_layers,
                   max_length=args.max_document_length, max_document_length=args.max_document_length, group_size=4,
                   max_new_tokens=32, batch_size=4, top_k=10, refresh_every=args.refresh_every, rank_band=args.rank_band,
                   learning_rate=1e-4)
    trainer = RetrievalGRPO(cfg, triples, corpus)
    rng = np.random.default_rng(0)
    steps = []
    for step in range(1, args.steps + 1):
        rows = rng.choice(len(triples), cfg.batch_size, replace=False)
        audit = args.audit_every > 0 and step % args.audit_every == 0
        steps.append(trainer.step([triples[i] for i in rows], [corpus.positive_ids[i] for i in rows], audit))
        print({k: round(v, 3) for k, v in steps[-1].items()}, flush=True)
    result = {
        "benchmark": "RL environment over a BEIR corpus (GRPO steps with partial refresh)",
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_trainer.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": args.model, **trainer.audit_index(steps, args.queries),
    }
    print(result)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
