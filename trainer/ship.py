"""Copy a trained adapter into the package (``searchr3_eval/weights/<name>``, loadable as ``searchr3:<name>``) with a
reference embedding of a fixed text, which the tests check the packaged model still reproduces.

Usage: python -m trainer.ship runs/sft-smollm2/final smollm2-sft [--case-fold all-caps] [--adapter-dtype bfloat16]

``--case-fold`` records in the manifest how the model folds letter case by default (``prompt_format.fold_case``).
``--adapter-dtype bfloat16`` stores the LoRA factors in half the bytes: the loader merges them into the float32 base
and casts the merged weights to the run's dtype, so on a bf16 machine they are rounded to bf16 either way.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from searchr3_eval.atomic import atomic_write_json, normal_permissions
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.locate import MANIFEST, ROWS_FILE, SHIPPED_DIR, read_manifest
from searchr3_eval.models.lm.prompt_format import CASE_FOLDS, trained_preset
from searchr3_eval.models.searchr3 import SearchR3Encoder

FILES = ("adapter_config.json", "adapter_model.safetensors", ROWS_FILE, MANIFEST)
WEIGHTS = "adapter_model.safetensors"
ADAPTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
REFERENCE_FILE = "reference_embedding.json"
MAX_BYTES = 50 * 2**20  # what one packaged model may take (tests/test_shipped_model.py checks every one)
REFERENCE_TEXT = "Vitamin D deficiency is associated with a higher risk of respiratory infections."


def reference_embedding(name: str) -> dict:
    """The packaged model's float32 embedding of ``REFERENCE_TEXT`` as a query with the prompts it was trained with
    (float32: the same on every CPU)."""
    encoder = SearchR3Encoder.from_pretrained(name, dtype="float32", show_progress=False)
    vector = encoder.encode([REFERENCE_TEXT], "query")[0]
    return {"text": REFERENCE_TEXT, "kind": "query", "dtype": "float32", "prompts": trained_preset(name),
            "vector": [round(float(x), 6) for x in vector]}


def stored_bytes(adapter: Path, adapter_dtype: str) -> int:
    """The bytes ``adapter`` takes in the package with its factors stored in ``adapter_dtype`` (from the factors'
    shapes in the safetensors header; no tensor is read)."""
    with safe_open(str(adapter / WEIGHTS), framework="pt") as factors:
        values = sum(math.prod(factors.get_slice(key).get_shape()) for key in factors.keys())
    return (values * ADAPTER_DTYPES[adapter_dtype].itemsize
            + sum((adapter / file).stat().st_size for file in FILES if file != WEIGHTS))


def ship(adapter: Path, name: str, case_fold: str = "off", adapter_dtype: str = "float32") -> Path:
    manifest = read_manifest(adapter)
    if (size := stored_bytes(adapter, adapter_dtype)) > MAX_BYTES:
        raise UserError(f"{adapter} would take {size / 2**20:.0f} MiB with {adapter_dtype} factors, above the "
                        f"{MAX_BYTES // 2**20} MiB a packaged model may take: store the factors in bfloat16 or ship a "
                        "lower rank")
    target = SHIPPED_DIR / name
    target.mkdir(parents=True, exist_ok=True)
    for file in FILES:
        shutil.copyfile(adapter / file, target / file)
    if adapter_dtype != "float32":
        weights = load_file(str(target / WEIGHTS))
        save_file({k: v.to(ADAPTER_DTYPES[adapter_dtype]) for k, v in weights.items()}, str(target / WEIGHTS))
    if case_fold != "off":
        atomic_write_json(target / MANIFEST, {**manifest, "case_fold": case_fold})
    config = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = manifest["base"]  # not the training machine's path
    atomic_write_json(target / "adapter_config.json", config)
    atomic_write_json(target / REFERENCE_FILE, reference_embedding(name))
    normal_permissions(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ship", description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved adapter folder, e.g. runs/sft-smollm2/final")
    parser.add_argument("name", help="the packaged model's name (searchr3:<name>)")
    parser.add_argument("--case-fold", default="off", choices=CASE_FOLDS,
                        help="the model's default letter-case folding (all-caps: lower-case texts written in capitals; "
                             "all-caps-sentence: write them in sentence case)")
    parser.add_argument("--adapter-dtype", default="float32", choices=tuple(ADAPTER_DTYPES),
                        help="how the LoRA factors are stored")
    args = parser.parse_args(argv)
    try:
        print(f"shipped {args.adapter} -> {ship(args.adapter, args.name, args.case_fold, args.adapter_dtype)}")
    except UserError as exc:
        print(f"ship: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
