"""Shared fixtures: a tiny random Qwen2 chat model made locally, and small BEIR folders of real data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchr3_eval.data import EMBEDDED_DIR, DEFAULT_TASK  # noqa: E402

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_tiny_chat_model(seed: int = 0):
    """A 2-layer Qwen2 (hidden 32) with a byte-level BPE tokenizer trained on the embedded corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = [json.loads(line)["text"] for line in open(EMBEDDED_DIR / DEFAULT_TASK / "corpus.jsonl")][:300]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model saved as a Hugging Face folder (no embed token yet)."""
    model, tokenizer = make_tiny_chat_model()
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_beir_folder(folder: Path, n: int) -> Path:
    """The first ``n`` queries/documents of the embedded GSM8K task as a BEIR folder."""
    source = EMBEDDED_DIR / DEFAULT_TASK
    (folder / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        lines = open(source / name, encoding="utf-8").read().splitlines()[:n]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    qrels = open(source / "qrels" / "test.tsv", encoding="utf-8").read().splitlines()[: n + 1]
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A --data-dir holding one small real task, ``MiniGSM`` (40 queries, 40 documents)."""
    write_beir_folder(tmp_path / "data" / "MiniGSM", 40)
    return tmp_path / "data"


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_beir() -> Path:
    """``../shared/data/beir`` (real BEIR SciFact and the Glasgow collections); skipped in a user's clone without it,
    but a failure under CI, which always has it."""
    folder = SHARED_DATA / "beir"
    if not (folder / "scifact" / "corpus.jsonl").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the shared data at {folder}")
        pytest.skip(f"needs the project's shared data at {folder}")
    return folder
