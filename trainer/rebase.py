"""A query adapter moved onto another document model: the same LoRA update over a new Search-R3 model's merged weights,
the start of training the query side against the new model's documents (its document model trained on, say). Only
the manifest's base changes; the factors and added rows are the adapter's.

Usage: python -m trainer.rebase searchr3:<query adapter> <document model> --output runs/candidates/rebased
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from searchr3_eval.atomic import atomic_write_folder
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.load import load_causal_lm
from searchr3_eval.models.lm.locate import (
    ROWS_FILE,
    document_model_of,
    packaged_name,
    read_manifest,
    shipped_model,
)
from searchr3_eval.models.lm.prompt_format import embed_token_id
from searchr3_eval.models.lm.save import write_manifest

ADAPTER_FILES = ("adapter_model.safetensors", ROWS_FILE)
PEFT_CONFIG = "adapter_config.json"


def _query_adapter(spec: str) -> Path:
    """The folder of the query adapter ``spec`` (a folder, or a packaged model as ``searchr3:<name>`` or its name)."""
    name = spec.removeprefix("searchr3:")
    folder = shipped_model(name) or Path(name)
    if document_model_of(folder) is None:
        raise UserError(f"{spec} is not a query adapter (a saved adapter whose manifest has \"side\": \"query\")")
    return folder


def _check_document_model(spec: str, vocab_size: int) -> None:
    """``spec`` must be a Search-R3 document model (it has the embed token) whose vocabulary the adapter's rows extend."""
    if document_model_of(shipped_model(spec) or spec) is not None:
        raise UserError(f"{spec} is a query adapter: the new base must be a document model")
    tokenizer = load_causal_lm(spec)[1]
    if embed_token_id(tokenizer) is None:
        raise UserError(f"{spec} is not a Search-R3 model (it has no embed token)")
    if len(tokenizer) != vocab_size:
        raise UserError(f"{spec} has {len(tokenizer)} tokens, the adapter's base had {vocab_size}")


def rebase(adapter: str, document_model: str, output: Path) -> Path:
    """Write to ``output`` (replaced atomically) ``adapter``'s LoRA and added rows as a query adapter over
    ``document_model``, with no letter-case default or card (``trainer.ship`` sets both for a packaged model)."""
    source, document_model = _query_adapter(adapter), document_model.removeprefix("searchr3:")
    manifest = read_manifest(source)
    _check_document_model(document_model, manifest["base_vocab_size"])
    base = packaged_name(document_model)
    peft_config = json.loads((source / PEFT_CONFIG).read_text())

    def write(tmp: Path) -> None:
        for name in ADAPTER_FILES:
            shutil.copyfile(source / name, tmp / name)
        (tmp / PEFT_CONFIG).write_text(json.dumps({**peft_config, "base_model_name_or_path": base}, indent=2) + "\n")
        write_manifest(tmp, base, manifest["base_vocab_size"], manifest["prompts"], manifest["side"])

    atomic_write_folder(output, write)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.rebase", description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="a query adapter: its folder, or searchr3:<name> for a packaged one")
    parser.add_argument("document_model", help="the new base: a Search-R3 document model (a packaged name or a folder)")
    parser.add_argument("--output", type=Path, required=True, help="the folder the moved adapter is saved to")
    args = parser.parse_args(argv)
    try:
        print(f"{args.adapter} over {args.document_model} -> {rebase(args.adapter, args.document_model, args.output)}")
    except UserError as exc:
        print(f"rebase: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
