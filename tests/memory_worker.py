"""Prints this process's resident MiB after training-like steps of varying shapes; argv[1] "on" first applies
``return_freed_memory`` (a process-wide allocator setting, so each case runs in its own process)."""
import random
import sys

import psutil
import torch

if sys.argv[1] == "on":
    from searchr3_eval.memory import return_freed_memory

    assert return_freed_memory()
torch.manual_seed(0)
rng = random.Random(0)
weight = torch.randn(576, 1536)
kept = []
for _ in range(150):
    x = torch.randn(8, rng.randint(20, 400), 576)  # a batch of another length every step
    hidden = torch.relu(x @ weight) @ weight.T
    attention = torch.softmax(hidden @ hidden.transpose(1, 2), -1)
    kept.append(hidden[:, -1].clone())  # a small piece of every step outlives it, as cached states do
    del x, hidden, attention
print(psutil.Process().memory_info().rss / 2**20)
