"""Run under ``torchrun`` or ``accelerate launch`` by tests/test_trainer.py: build the GRPO trainer over MiniGSM, take
two steps on this process's share of fixed batches, and save the index (before and after), the steps' statistics and
the trained weights (whole tensors) per rank. A fourth argument names the run; ``all-layers`` trains LoRA on every
layer (FSDP cannot cache frozen lower layers), otherwise only the top layer is trained."""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from searchr3_eval import distributed
from trainer import collectives
from trainer.config import RLConfig
from trainer.rl import RetrievalGRPO, beir_training_set

model_dir, data_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else ""
distributed.init_from_env()
rank, size = distributed.rank_and_size()
triples, corpus = beir_training_set(data_dir / "MiniGSM", "test")
cfg = RLConfig(model=model_dir, output_dir=str(out), group_size=2, max_new_tokens=6, batch_size=4, max_length=200,
               lora=True, train_layers=None if "all-layers" in name else 1, refresh_every=8, top_k=3, learning_rate=1e-2,
               mixed_precision="no", batch_tokens=512 if "all-layers" in name else 4096)  # ranks run unequal chunks
trainer = RetrievalGRPO(cfg, triples, corpus)
np.save(out / f"index-start{name}-{size}-{rank}.npy", trainer.env.embeddings)
steps = []
for step in range(2):
    rows = collectives.shard_of(list(range(step * 4, step * 4 + 4)), rank, size)
    steps.append(collectives.mean_across_ranks(trainer.step([triples[i] for i in rows], [corpus.positive_ids[i] for i in rows])))
np.save(out / f"index-end{name}-{size}-{rank}.npy", trainer.env.embeddings)
one = collectives.map_sharded(lambda share: trainer.policy.embed(share, "document"), corpus.doc_texts[:1])  # one idle rank
np.save(out / f"one-document{name}-{size}-{rank}.npy", one.numpy())
if "fsdp" in name:  # processes whose generations end at different lengths must keep running the layers together
    trainer.cfg = dataclasses.replace(cfg, max_new_tokens=2 + 4 * rank)
    generated = [len(a) for a in trainer.rollout([triples[rank].query], 2).actions]
    (out / f"generated{name}-{size}-{rank}.json").write_text(json.dumps(generated))
(out / f"steps{name}-{size}-{rank}.json").write_text(json.dumps(steps))
whole = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()  # a DTensor's gathered shards
         for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
torch.save(whole, out / f"weights{name}-{size}-{rank}.pt")
distributed.shutdown()
