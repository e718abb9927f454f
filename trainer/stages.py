"""The trainer's stages, as ``searchr3-train`` and ``searchr3-eval train`` run them (``trainer.cli`` sets the process up
first)."""
from __future__ import annotations

from pathlib import Path

from searchr3_eval import distributed
from trainer.config import DataConfig, RLConfig, SFTConfig, load_config
from trainer.prepare import prepare_data
from trainer.rl import train_rl
from trainer.sft import train_sft


def run_stage(stage: str, config: Path) -> int:
    """Run one stage (data, sft or rl) from its YAML config; a ``UserError`` reaches the caller."""
    if stage == "data":
        data_cfg = load_config(config, DataConfig)
        summary = prepare_data(data_cfg)
        print(f"data: {summary['train']} training and {summary['heldout']} held-out triples -> {data_cfg.output_dir}")
        return 0
    try:
        if stage == "sft":
            summary = train_sft(load_config(config, SFTConfig))
        else:
            summary = train_rl(load_config(config, RLConfig))
        prints = distributed.is_main()
    finally:  # a process that exits with its process group alive can abort in gloo's threads at exit
        distributed.shutdown()
    if prints:
        print(f"{stage}: {summary['steps']} steps; model -> {summary['model']}; log -> {summary['log']}")
    return 0
