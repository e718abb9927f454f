"""Copy a trained adapter into the package (``searchr3_eval/weights/<name>``, loadable as ``searchr3:<name>``) with a
reference embedding of a fixed text, which the tests check the packaged model still reproduces.

Usage: python -m trainer.ship runs/sft-smollm2/final smollm2-sft [--case-fold all-caps]

``--case-fold`` records in the manifest how the model folds letter case by default (``prompt_format.fold_case``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from searchr3_eval.atomic import atomic_write_json, normal_permissions
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.locate import MANIFEST, ROWS_FILE, SHIPPED_DIR, read_manifest
from searchr3_eval.models.lm.prompt_format import CASE_FOLDS, trained_preset
from searchr3_eval.models.searchr3 import SearchR3Encoder

FILES = ("adapter_config.json", "adapter_model.safetensors", ROWS_FILE, MANIFEST)
REFERENCE_FILE = "reference_embedding.json"
REFERENCE_TEXT = "Vitamin D deficiency is associated with a higher risk of respiratory infections."


def reference_embedding(name: str) -> dict:
    """The packaged model's float32 embedding of ``REFERENCE_TEXT`` as a query with the prompts it was trained with
    (float32: the same on every CPU)."""
    encoder = SearchR3Encoder.from_pretrained(name, dtype="float32", show_progress=False)
    vector = encoder.encode([REFERENCE_TEXT], "query")[0]
    return {"text": REFERENCE_TEXT, "kind": "query", "dtype": "float32", "prompts": trained_preset(name),
            "vector": [round(float(x), 6) for x in vector]}


def ship(adapter: Path, name: str, case_fold: str = "off") -> Path:
    manifest = read_manifest(adapter)
    target = SHIPPED_DIR / name
    target.mkdir(parents=True, exist_ok=True)
    for file in FILES:
        shutil.copyfile(adapter / file, target / file)
    if case_fold != "off":
        atomic_write_json(target / MANIFEST, {**manifest, "case_fold": case_fold})
    config = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = read_manifest(adapter)["base"]  # not the training machine's path
    atomic_write_json(target / "adapter_config.json", config)
    atomic_write_json(target / REFERENCE_FILE, reference_embedding(name))
    normal_permissions(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ship", description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved adapter folder, e.g. runs/sft-smollm2/final")
    parser.add_argument("name", help="the packaged model's name (searchr3:<name>)")
    parser.add_argument("--case-fold", default="off", choices=CASE_FOLDS,
                        help="the model's default letter-case folding (all-caps: lower-case texts written in capitals)")
    args = parser.parse_args(argv)
    try:
        print(f"shipped {args.adapter} -> {ship(args.adapter, args.name, args.case_fold)}")
    except UserError as exc:
        print(f"ship: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
