"""``searchr3-train data|sft|rl --config file.yaml`` (also ``searchr3-eval train ...``): sets the process up, then
runs ``trainer.stages``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from searchr3_eval.errors import UserError
from searchr3_eval.memory import configure_command_line


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run from the shell (also each process of ``accelerate launch``)
        configure_command_line(training=True)
    parser = argparse.ArgumentParser(prog="searchr3-train", description=__doc__)
    parser.add_argument("stage", choices=["data", "sft", "rl"])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        # the trainer loads only now, after the allocator restart, so nothing heavy loads twice
        from trainer.stages import run_stage

        return run_stage(args.stage, args.config)
    except UserError as exc:
        print(f"searchr3-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
