"""trainer.soup: a weighted sum of two real LoRA adapters' updates over a tiny Qwen2, truncated to their rank or
kept whole."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.load import load_causal_lm
from searchr3_eval.models.lm.locate import MANIFEST
from searchr3_eval.models.searchr3 import SearchR3Encoder
from tests.test_trainer import keyword_triples
from trainer.config import SFTConfig
from trainer.data import write_triples
from trainer.sft import train_sft
from trainer.soup import main, soup

MODULE = "model.layers.1.mlp.down_proj.weight"  # a LoRA target of the top layer (train_layers: 1)


def _adapter(tiny_model_dir, tmp_path, seed: int):
    write_triples(tmp_path / f"train{seed}.jsonl", keyword_triples(seed, 32))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / f"run{seed}"),
                    train_file=str(tmp_path / f"train{seed}.jsonl"), lora=True, lora_r=4, lora_alpha=8,
                    train_layers=1, learning_rate=3e-2, batch_size=16, max_steps=4, max_length=160,
                    mixed_precision="no", seed=seed)
    return Path(train_sft(cfg, show_progress=False)["model"])


def _weight(folder) -> torch.Tensor:
    model = load_causal_lm(str(folder), "float32")[0]
    return model.state_dict()[MODULE].double()


def test_a_soup_is_the_best_rank_r_sum_of_the_adapters_updates(tiny_model_dir, tmp_path):
    first, second = _adapter(tiny_model_dir, tmp_path, 1), _adapter(tiny_model_dir, tmp_path, 2)
    base = _weight(tiny_model_dir)
    updates = [_weight(first) - base, _weight(second) - base]
    assert all(u.norm() > 1e-3 for u in updates) and (updates[0] - updates[1]).norm() > 1e-3

    soup([first, second], [0.3, 0.7], tmp_path / "soup")
    expected = 0.3 * updates[0] + 0.7 * updates[1]
    u, s, vh = np.linalg.svd(expected.numpy())
    truncated = (u[:, :4] * s[:4]) @ vh[:4]  # the best rank-4 approximation (Eckart-Young)
    np.testing.assert_allclose((_weight(tmp_path / "soup") - base).numpy(), truncated, atol=1e-5)
    assert json.loads((tmp_path / "soup" / MANIFEST).read_text()) == json.loads((first / MANIFEST).read_text())

    assert main([str(first), str(second), "--weights", "0.3", "0.7", "--exact", "--output", str(tmp_path / "exact")]) == 0
    np.testing.assert_allclose((_weight(tmp_path / "exact") - base).numpy(), expected.numpy(), atol=1e-5)
    assert json.loads((tmp_path / "exact" / "adapter_config.json").read_text())["r"] == 8  # 4 + 4
    assert json.loads((tmp_path / "exact" / MANIFEST).read_text()) == json.loads((first / MANIFEST).read_text())
    assert sorted(p.name for p in (tmp_path / "exact").iterdir()) == sorted(p.name for p in first.iterdir())

    assert main([str(first), str(second), "--weights", "1", "0", "--output", str(tmp_path / "first")]) == 0
    texts = ["find apple", "some notes about river here"]
    np.testing.assert_allclose(SearchR3Encoder.from_pretrained(str(tmp_path / "first"), max_length=160).encode(texts, "query"),
                               SearchR3Encoder.from_pretrained(str(first), max_length=160).encode(texts, "query"),
                               atol=1e-5)


def test_a_soup_refuses_adapters_over_different_bases_with_one_line(tiny_model_dir, tmp_path, capsys):
    first = _adapter(tiny_model_dir, tmp_path, 1)
    other = tmp_path / "other"
    shutil.copytree(first, other)
    manifest = json.loads((other / MANIFEST).read_text())
    (other / MANIFEST).write_text(json.dumps({**manifest, "base": "smollm2"}))
    with pytest.raises(UserError, match="differs from .* in base"):
        soup([first, other], [0.5, 0.5], tmp_path / "soup")
    assert main([str(first), str(tmp_path), "--weights", "1", "0", "--output", str(tmp_path / "x")]) == 2
    assert main([str(first), str(first), "--weights", "1", "--output", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.split("soup: error: ")[1:]  # (after any model-loading bar left on the line)
    assert [len(e.strip().splitlines()) for e in errors] == [1, 1]
    assert "is not a saved Search-R3 adapter folder" in errors[0] and "one weight each" in errors[1]
