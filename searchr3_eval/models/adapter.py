"""A trained Search-R3 model kept small: a LoRA adapter plus the embed token's embedding rows, over a base LLM.

The folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors``, ``embed_rows.safetensors`` (the
input, and if untied output, embedding rows of the tokens added to the base vocabulary) and ``searchr3_adapter.json``
(the base model spec, and the prompt preset the model was trained with: the evaluator's default for it). Models shipped in the package live under ``searchr3_eval/weights/<name>`` and load as
``searchr3:<name>``.

A *query adapter* is an adapter over another Search-R3 model (its base, the document model) that only queries use:
its manifest says ``"side": "query"``; documents are embedded by the document model as they are without it, so
their cached embeddings are shared.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from searchr3_eval.atomic import atomic_write_text, normal_permissions
from searchr3_eval.errors import UserError

MANIFEST = "searchr3_adapter.json"
ROWS_FILE = "embed_rows.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def shipped_model(name: str) -> Path | None:
    """The packaged adapter folder called ``name``, if there is one."""
    folder = SHIPPED_DIR / name
    return folder if "/" not in name and is_adapter(folder) else None


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["base"]
        manifest["base_vocab_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a readable Search-R3 adapter manifest ({exc})") from exc
    return manifest


def document_model_of(folder: str | Path) -> str | None:
    """The document model a query adapter applies to (its base), or None when ``folder`` is not a query adapter."""
    if not is_adapter(folder):
        return None
    manifest = read_manifest(folder)
    return manifest["base"] if manifest.get("side") == "query" else None


def packaged_name(spec: str) -> str:
    """A packaged model's folder as its name (``searchr3_eval/weights/smollm2-sft`` -> ``smollm2-sft``), so that a
    manifest's base resolves on any machine; any other spec as it is."""
    path = Path(spec).resolve()
    return path.name if path.parent == SHIPPED_DIR and is_adapter(path) else spec


def save_adapter(peft_model, folder: str | Path, base: str, base_vocab_size: int, prompts: str,
                 state: dict[str, torch.Tensor] | None = None, side: str | None = None) -> None:
    """Write the adapter, the added tokens' embedding rows and the manifest (the tokenizer is the base's plus the
    embed token, so it is not saved). ``state``: the model's whole state dict (from its shards, when it is sharded);
    default ``peft_model.state_dict()``. ``side="query"``: a query adapter over the Search-R3 model ``base``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = peft_model.state_dict() if state is None else state
    for config in peft_model.peft_config.values():  # the base spec, not this machine's path to it
        config.base_model_name_or_path = base
    # the added rows are saved below; a training run's frozen reference copy of the adapter is not saved
    peft_model.save_pretrained(folder, state_dict=state, save_embedding_layers=False, selected_adapters=["default"])
    model = peft_model.get_base_model()
    names = {module: name for name, module in peft_model.named_modules()}
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {"input": state[f"{names[input_embeddings]}.weight"][base_vocab_size:].float().contiguous()}
    if output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight:
        rows["output"] = state[f"{names[output_embeddings]}.weight"][base_vocab_size:].float().contiguous()
    save_file({k: v.detach().cpu() for k, v in rows.items()}, str(folder / ROWS_FILE))
    manifest = {"base": base, "base_vocab_size": base_vocab_size, "prompts": prompts, **({"side": side} if side else {})}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    normal_permissions(folder)


def load_adapter(folder: str | Path, dtype: str, attn_implementation: str | None, device: str,
                 trainable: bool = False):
    """(model, tokenizer): the base with the embed token, its saved rows and the adapter. For inference the adapter is
    merged in float32 and the result cast to ``dtype``; ``trainable`` keeps a float32 peft model to train further."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from searchr3_eval.models.llm import DTYPES, load_causal_lm, resolve_device, resolve_dtype
    from searchr3_eval.models.prompt_format import add_embed_token, embed_token_id

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
