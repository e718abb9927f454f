"""Choose ``reasoning_direct_weight`` on held-out training queries: the greedy analyses of a GRPO config's held-out
queries (``heldout_fraction``) are written once, and the mean reciprocal rank of the positive in the config's frozen
index is measured for each weight (0: the embedding after the analysis; 1: the direct embedding).

    python scripts/heldout_direct_weight.py trainer/configs/query_rl_mix_smollm2.yaml --weights 0,0.25,0.5,0.75,1
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from searchr3_eval.models.searchr3 import mix_direct
from trainer.config import RLConfig, load_config
from trainer.rl import RetrievalGRPO, heldout_rows, training_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args()
    cfg = replace(load_config(args.config, RLConfig), reasoning_direct_weight=0.0)  # rollouts: after the analysis
    triples, corpus = training_set(cfg)
    trainer = RetrievalGRPO(cfg, triples, corpus)
    rows = heldout_rows(triples, cfg.heldout_fraction, cfg.seed)[1]
    queries, positives = [triples[i].query for i in rows], [trainer.positive_ids[i] for i in rows]
    rollouts = [trainer.rollout(queries[s : s + 16], 1, greedy=True) for s in range(0, len(rows), 16)]
    reasoned = np.concatenate([r.embeddings for r in rollouts])
    with torch.no_grad():
        direct = trainer.policy.embed(queries, "query", batch_tokens=cfg.batch_tokens).float().cpu().numpy()
    result = {"model": cfg.model, "heldout_queries": len(rows)}
    for weight in (float(w) for w in args.weights.split(",")):
        ranks = trainer.env.ranks(mix_direct(reasoned, direct, weight), positives)
        result[f"mrr@weight={weight:g}"] = round(float(np.mean(1.0 / ranks)), 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
