"""Writing a trained Search-R3 model kept small: its LoRA adapter, the embed token's embedding rows and the manifest
(``locate`` describes the folder)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from searchr3_eval.atomic import atomic_write_text, normal_permissions
from searchr3_eval.models.lm.locate import MANIFEST, ROWS_FILE


def save_adapter(peft_model, folder: str | Path, base: str, base_vocab_size: int, prompts: str,
                 state: dict[str, torch.Tensor] | None = None, side: str | None = None,
                 adapter: str = "default") -> None:
    """Write the adapter, the added tokens' embedding rows and the manifest (the tokenizer is the base's plus the
    embed token, so it is not saved). ``state``: the model's whole state dict (from its shards, when it is sharded);
    default ``peft_model.state_dict()``. ``side="query"``: a query adapter over the Search-R3 model ``base``.
    ``adapter``: which of the model's LoRA adapters to write (it loads back as the folder's default)."""
    folder = Path(folder)
    state = peft_model.state_dict() if state is None else state
    for config in peft_model.peft_config.values():  # the base spec, not this machine's path to it
        config.base_model_name_or_path = base
    # the added rows are saved below; a training run's frozen reference copy of the adapter is not saved
    peft_model.save_pretrained(folder, state_dict=state, save_embedding_layers=False, selected_adapters=[adapter])
    if adapter != "default":  # peft writes any other adapter to a subfolder of its name
        for file in (folder / adapter).iterdir():
            file.replace(folder / file.name)
        (folder / adapter).rmdir()
    model = peft_model.get_base_model()
    names = {module: name for name, module in peft_model.named_modules()}
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {"input": state[f"{names[input_embeddings]}.weight"][base_vocab_size:].float().contiguous()}
    if output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight:
        rows["output"] = state[f"{names[output_embeddings]}.weight"][base_vocab_size:].float().contiguous()
    save_file({k: v.detach().cpu() for k, v in rows.items()}, str(folder / ROWS_FILE))
    write_manifest(folder, base, base_vocab_size, prompts, side)
    normal_permissions(folder)


def write_manifest(folder: str | Path, base: str, base_vocab_size: int, prompts: str, side: str | None = None) -> None:
    """The adapter's ``searchr3_adapter.json``: its base, the base's vocabulary size, the prompt preset and, for a
    query adapter, ``"side": "query"``."""
    manifest = {"base": base, "base_vocab_size": base_vocab_size, "prompts": prompts,
                **({"side": side} if side else {})}
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
