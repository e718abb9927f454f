"""Loading causal LMs: Hugging Face folders, hub names, GGUF files (converted once) and Search-R3 adapters over their
base (a query adapter's base is itself an adapter, so the two loaders call each other)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.device import DTYPE_CHOICES, DTYPES, resolve_device, resolve_dtype
from searchr3_eval.models.lm.gguf import gguf_as_folder
from searchr3_eval.models.lm.locate import ROWS_FILE, is_adapter, llm_revision, read_manifest, resolve_llm
from searchr3_eval.models.lm.prompt_format import add_embed_token, embed_token_id


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                   device: str = "cpu"):
    """Load (model, tokenizer, revision, display name) on ``device``; errors become ``UserError``."""
    if dtype not in DTYPE_CHOICES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder, gguf_file, display = resolve_llm(name_or_path)
    if attn_implementation is None and dtype == "bfloat16" and device == "cpu":
        attn_implementation = "eager"  # measured faster than sdpa for bf16 on CPU (benchmarks/bench_encoders.py)
    if is_adapter(folder):
        model, tokenizer = load_adapter(folder, dtype, attn_implementation, device)
        return model, tokenizer, llm_revision(name_or_path), display
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        if gguf_file:
            folder = str(gguf_as_folder(Path(folder) / gguf_file))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load causal LM {name_or_path!r}: {exc}") from exc
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, llm_revision(name_or_path), display


def load_adapter(folder: str | Path, dtype: str, attn_implementation: str | None, device: str,
                 trainable: bool = False):
    """(model, tokenizer): the base with the embed token, its saved rows and the adapter. For inference the adapter is
    merged in float32 and the result cast to ``dtype``; ``trainable`` keeps a float32 peft model to train further."""
    from peft import PeftModel  # 1.9 s to import, and only adapters need it

    manifest = read_manifest(folder)
    model, tokenizer, _, _ = load_causal_lm(manifest["base"], "float32", attn_implementation, device)
    if len(tokenizer) != manifest["base_vocab_size"]:
        raise UserError(f"{folder}: base {manifest['base']!r} has {len(tokenizer)} tokens, the adapter expects "
                        f"{manifest['base_vocab_size']}")
    if embed_token_id(tokenizer) is None:  # a query adapter's base (a Search-R3 model) has it already
        add_embed_token(model, tokenizer)
    rows = load_file(str(Path(folder) / ROWS_FILE))
    with torch.no_grad():
        model.get_input_embeddings().weight[manifest["base_vocab_size"]:] = rows["input"]
        if "output" in rows:
            model.get_output_embeddings().weight[manifest["base_vocab_size"]:] = rows["output"]
    try:
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load the adapter in {folder}: {exc}") from exc
    if trainable:
        return model, tokenizer
    model = model.merge_and_unload()
    return model.to(DTYPES[resolve_dtype(dtype, resolve_device(device))]).eval(), tokenizer
