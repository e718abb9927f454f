"""A run's checkpoint as a model folder the evaluator loads (``searchr3:<folder>``): the policy at the checkpoint's
step, where ``final`` is the best held-out one. ``python -m trainer.export rl --config <config> --to <folder>``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from searchr3_eval.errors import UserError
from trainer import sharding
from trainer.config import RLConfig, SFTConfig, load_config
from trainer.modeling import Policy
from trainer.sft import load_checkpoint

CONFIGS = {"sft": SFTConfig, "rl": RLConfig}


def export_checkpoint(cfg: SFTConfig | RLConfig, folder: Path) -> int:
    """Save the policy of ``<output_dir>/checkpoint`` to ``folder``; returns the checkpoint's step."""
    state = load_checkpoint(Path(cfg.output_dir) / "checkpoint")
    if state is None:
        raise UserError(f"no checkpoint in {cfg.output_dir}/checkpoint")
    settings = {"max_new_tokens": cfg.max_new_tokens} if isinstance(cfg, RLConfig) else {}
    policy = Policy.from_config(cfg, **settings)
    sharding.load_model_state(policy.model, state["model"])
    policy.save(folder)
    return int(state["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__)
    parser.add_argument("stage", choices=sorted(CONFIGS))
    parser.add_argument("--config", type=Path, required=True, help="the run's YAML config")
    parser.add_argument("--to", type=Path, required=True, help="the model folder to write")
    args = parser.parse_args(argv)
    try:
        step = export_checkpoint(load_config(args.config, CONFIGS[args.stage]), args.to)
    except UserError as exc:
        print(f"trainer.export: error: {exc}", file=sys.stderr)
        return 2
    print(f"step {step} -> {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
