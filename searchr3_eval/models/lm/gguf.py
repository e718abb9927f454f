"""GGUF models converted once into a Hugging Face folder in the cache.

transformers reads a GGUF file's metadata in Python for the config, the weights and the tokenizer alike: about 30 s
for SmolLM2-135M on a 2-core CPU, at every load. The dequantized weights (float32) and the tokenizer are saved once
under ``<cache>/models/gguf/<content hash>/`` and later loads read that folder in about a second.
"""
from __future__ import annotations

from pathlib import Path

from searchr3_eval.atomic import atomic_write_folder
from searchr3_eval.cache import default_cache_dir
from searchr3_eval.errors import UserError
from searchr3_eval.fingerprint import fingerprint


def converted_gguf_folder(gguf_path: Path) -> Path:
    """Where the conversion of ``gguf_path`` is (or would be) kept; the folder name is the file's content hash."""
    return default_cache_dir() / "models" / "gguf" / fingerprint(gguf_path)


def gguf_as_folder(gguf_path: Path) -> Path:
    """The Hugging Face folder of a GGUF file's float32 weights and tokenizer, converting it the first time. Errors
    of transformers' GGUF reader (OSError, ValueError) reach the caller; an unwritable cache is a UserError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_gguf_folder(gguf_path)
    if folder.is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)  # before the 30 s conversion, not after it
    except OSError as exc:
        raise unwritable(folder, exc) from exc
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.hf_quantizer = None  # the weights are dequantized; drop the GGUF marker so the model can be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        return atomic_write_folder(folder, save, replace=False)
    except OSError as exc:
        raise unwritable(folder, exc) from exc


def unwritable(folder: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the converted GGUF model to {folder} ({exc}); set SEARCHR3_CACHE to a writable "
                     "folder")
