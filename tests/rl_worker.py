"""Run under ``torchrun`` by tests/test_trainer.py: build the GRPO trainer over MiniGSM, take two steps on this
process's share of fixed batches, and save the index (before and after) and the trained weights per rank."""
import sys
from pathlib import Path

import numpy as np
import torch

from searchr3_eval import distributed
from trainer.config import RLConfig
from trainer.rl import GRPOTrainer, beir_training_set

model_dir, data_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
distributed.init_from_env()
rank, size = distributed.rank_and_size()
triples, corpus = beir_training_set(data_dir / "MiniGSM", "test")
cfg = RLConfig(model=model_dir, output_dir=str(out), group_size=2, max_new_tokens=6, batch_size=4, max_length=200,
               lora=True, train_layers=1, refresh_every=8, top_k=3, learning_rate=1e-2, mixed_precision="no")
trainer = GRPOTrainer(cfg, triples, corpus)
np.save(out / f"index-start-{size}-{rank}.npy", trainer.env.embeddings)
for step in range(2):
    rows = distributed.shard_of(list(range(step * 4, step * 4 + 4)), rank, size)
    trainer.step([triples[i] for i in rows], [corpus.positive_ids[i] for i in rows])
np.save(out / f"index-end-{size}-{rank}.npy", trainer.env.embeddings)
torch.save([p.detach() for p in trainer.trainable], out / f"weights-{size}-{rank}.pt")
distributed.shutdown()
