"""trainer.rebase: a query adapter's LoRA update moved onto another document model (tiny real Qwen2 models)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.load import load_causal_lm
from searchr3_eval.models.lm.locate import MANIFEST, document_model_of
from searchr3_eval.models.lm.prompt_format import add_embed_token
from searchr3_eval.models.searchr3 import SearchR3Encoder
from tests.conftest import make_tiny_chat_model
from trainer.modeling import Policy
from trainer.rebase import main, rebase

MODULE = "model.layers.1.self_attn.q_proj.weight"  # a LoRA target of the top layer (train_layers: 1)


def _document_model(folder: Path, seed: int, extra_tokens: list[str] = ()) -> Path:
    model, tokenizer = make_tiny_chat_model(seed=seed)
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
        model.resize_token_embeddings(len(tokenizer))
    add_embed_token(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _weight(folder: Path) -> torch.Tensor:
    return load_causal_lm(str(folder), "float32")[0].state_dict()[MODULE].double()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two document models and a query adapter over the first, its LoRA factors random (so its update is not 0)."""
    root = tmp_path_factory.mktemp("rebase")
    first, second = _document_model(root / "first", 1), _document_model(root / "second", 3)
    policy = Policy(str(first), lora=True, lora_r=4, lora_alpha=8, train_layers=1, query_adapter=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    policy.save(root / "adapter")
    return first, second, root / "adapter"


def test_the_moved_adapter_adds_the_same_update_to_the_new_document_model(models, tmp_path):
    first, second, adapter = models
    update = _weight(adapter) - _weight(first)
    assert update.norm() > 1e-2

    assert main([str(adapter), str(second), "--output", str(tmp_path / "moved")]) == 0
    moved = tmp_path / "moved"
    np.testing.assert_allclose((_weight(moved) - _weight(second)).numpy(), update.numpy(), atol=1e-6)
    assert document_model_of(moved) == str(second)
    manifest, before = (json.loads((folder / MANIFEST).read_text()) for folder in (moved, adapter))
    assert manifest == {**before, "base": str(second)}
    assert json.loads((moved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(second)

    # documents are the new document model's own embeddings; queries go through the moved adapter
    texts = ["notes about a river", "find apple"]
    moved_encoder, second_encoder = (SearchR3Encoder.from_pretrained(str(f), max_length=160, dtype="float32")
                                     for f in (moved, second))
    np.testing.assert_allclose(moved_encoder.encode(texts, "document"), second_encoder.encode(texts, "document"),
                               atol=1e-6)
    assert not np.allclose(moved_encoder.encode(texts, "query"), second_encoder.encode(texts, "query"), atol=1e-3)


def test_rebase_refuses_what_is_not_a_query_adapter_or_a_matching_document_model(models, tiny_model_dir, tmp_path,
                                                                                 capsys):
    first, second, adapter = models
    with pytest.raises(UserError, match="is not a query adapter"):
        rebase(str(first), str(second), tmp_path / "x")
    with pytest.raises(UserError, match="is a query adapter: the new base must be a document model"):
        rebase(str(adapter), str(adapter), tmp_path / "x")
    with pytest.raises(UserError, match="has no embed token"):
        rebase(str(adapter), str(tiny_model_dir), tmp_path / "x")
    wider = _document_model(tmp_path / "wider", 3, ["<extra>"])
    with pytest.raises(UserError, match="has .* tokens, the adapter's base had"):
        rebase(str(adapter), str(wider), tmp_path / "x")
    assert not (tmp_path / "x").exists()

    assert main(["searchr3:no-such-adapter", str(second), "--output", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.split("rebase: error: ")[1:]
    assert [len(e.strip().splitlines()) for e in errors] == [1]
