"""``searchr3-train data|sft|rl --config file.yaml`` (also ``searchr3-eval train ...``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from searchr3_eval.errors import UserError
from searchr3_eval.memory import configure_command_line


def run_stage(stage: str, config: Path) -> int:
    from trainer.config import DataConfig, RLConfig, SFTConfig, load_config

    if stage == "data":
        from trainer.prepare import prepare_data

        data_cfg = load_config(config, DataConfig)
        summary = prepare_data(data_cfg)
        print(f"data: {summary['train']} training and {summary['heldout']} held-out triples -> {data_cfg.output_dir}")
        return 0
    from searchr3_eval import distributed

    try:
        if stage == "sft":
            from trainer.sft import train_sft

            summary = train_sft(load_config(config, SFTConfig))
        else:
            from trainer.rl import train_rl

            summary = train_rl(load_config(config, RLConfig))
        prints = distributed.is_main()
    finally:  # a process that exits with its process group alive can abort in gloo's threads at exit
        distributed.shutdown()
    if prints:
        print(f"{stage}: {summary['steps']} steps; model -> {summary['model']}; log -> {summary['log']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run from the shell (also each process of ``accelerate launch``)
        configure_command_line(training=True)
    parser = argparse.ArgumentParser(prog="searchr3-train", description=__doc__)
    parser.add_argument("stage", choices=["data", "sft", "rl"])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return run_stage(args.stage, args.config)
    except UserError as exc:
        print(f"searchr3-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
