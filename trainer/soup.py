"""A weight-space ensemble of Search-R3 adapters trained over the same base (a model soup; WiSE-FT between a model and
its fine-tuned continuation): the weighted sum of their low-rank updates, truncated back to the first adapter's rank by
SVD (peft's ``add_weighted_adapter``, combination ``svd``), or with ``--exact`` kept whole at the sum of their ranks
(combination ``cat``: the factors stacked). Weights outside [0, 1] extrapolate along the difference.

Usage: python -m trainer.soup runs/a/final runs/b/final --weights 0.5 0.5 [--exact] --output runs/candidates/soup
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from searchr3_eval.atomic import atomic_write_folder
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.load import load_adapter
from searchr3_eval.models.lm.locate import ROWS_FILE, is_adapter, read_manifest
from searchr3_eval.models.lm.save import save_adapter

SOUP = "soup"
SHARED = ("base", "base_vocab_size", "prompts", "side")  # what the adapters must share (not the case_fold default)


def _check_compatible(adapters: list[Path]) -> dict:
    """The first adapter's manifest, after checking that every adapter shares its base, side, prompts and added rows
    (a shipped adapter's ``case_fold`` is an inference default that ``trainer.ship`` sets, so it is not compared)."""
    for folder in adapters:
        if not is_adapter(folder):
            raise UserError(f"{folder} is not a saved Search-R3 adapter folder")
    first = read_manifest(adapters[0])
    rows = load_file(str(adapters[0] / ROWS_FILE))
    for folder in adapters[1:]:
        manifest = read_manifest(folder)
        differ = [key for key in SHARED if manifest.get(key) != first.get(key)]
        if differ:
            raise UserError(f"{folder} differs from {adapters[0]} in {', '.join(differ)}: a soup needs adapters over "
                            "the same base")
        other = load_file(str(folder / ROWS_FILE))
        if other.keys() != rows.keys() or any(not torch.equal(rows[k], other[k]) for k in rows):
            raise UserError(f"{folder}'s added token rows differ from {adapters[0]}'s: a soup mixes LoRA updates only")
    return first


def soup(adapters: list[Path], weights: list[float], output: Path, exact: bool = False) -> Path:
    """Write to ``output`` (replaced atomically) the adapter whose update of each weight matrix is sum(w_i * update_i):
    its best approximation at the first adapter's rank and LoRA scaling, or with ``exact`` the sum itself at the sum of
    the ranks; with the adapters' shared manifest and added rows (``trainer.ship`` sets the packaged form's letter-case
    default)."""
    if len(adapters) != len(weights) or len(adapters) < 2:
        raise UserError(f"a soup needs two or more adapters and one weight each (got {len(adapters)} adapters and "
                        f"{len(weights)} weights)")
    manifest = _check_compatible(adapters)
    model, _ = load_adapter(adapters[0], "float32", None, "cpu", trainable=True)
    names = ["default"]
    for i, folder in enumerate(adapters[1:], start=1):
        try:
            model.load_adapter(str(folder), adapter_name=f"adapter{i}")
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"could not load the adapter in {folder}: {exc}") from exc
        names.append(f"adapter{i}")
    rank = model.peft_config["default"].r
    try:
        model.add_weighted_adapter(names, weights, SOUP, combination_type="cat" if exact else "svd", svd_rank=rank)
    except ValueError as exc:  # e.g. adapters of different layers or modules
        raise UserError(f"could not combine {', '.join(map(str, adapters))}: {exc}") from exc
    kept = SOUP if exact else "default"  # exact: the soup at a rank of its own, saved as it is
    if not exact:
        with torch.no_grad():  # the soup's factors into "default", rescaled from the soup's scaling (1) to default's
            for module in model.modules():
                if hasattr(module, "lora_A") and SOUP in module.lora_A:
                    module.lora_A["default"].weight.copy_(module.lora_A[SOUP].weight)
                    module.lora_B["default"].weight.copy_(module.lora_B[SOUP].weight
                                                           * module.scaling[SOUP] / module.scaling["default"])
    for name in names + [SOUP]:
        if name != kept:
            model.delete_adapter(name)
    model.set_adapter(kept)
    atomic_write_folder(output, lambda tmp: save_adapter(model, tmp, manifest["base"], manifest["base_vocab_size"],
                                                         manifest["prompts"], side=manifest.get("side"), adapter=kept))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.soup", description=__doc__.splitlines()[0])
    parser.add_argument("adapters", type=Path, nargs="+", help="saved adapter folders over the same base")
    parser.add_argument("--weights", type=float, nargs="+", required=True, help="one weight per adapter")
    parser.add_argument("--exact", action="store_true",
                        help="keep the weighted sum whole, at the sum of the adapters' ranks (default: the first's rank)")
    parser.add_argument("--output", type=Path, required=True, help="the folder the soup is saved to")
    args = parser.parse_args(argv)
    try:
        print(f"soup of {len(args.adapters)} adapters -> {soup(args.adapters, args.weights, args.output, args.exact)}")
    except UserError as exc:
        print(f"soup: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
