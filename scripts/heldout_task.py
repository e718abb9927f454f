"""Write a data config's held-out queries as a BEIR task with every document their train judgements name
(``trainer.prepare.write_heldout_task``), to rank candidates on them as the evaluation ranks a test split. Run the data
stage first (it writes ``heldout.jsonl``).

    python scripts/heldout_task.py trainer/configs/data_query_smollm2.yaml runs/heldout/heldout-query
    HF_HUB_OFFLINE=1 searchr3-eval run --tasks heldout-query --data-dir runs/heldout --models ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchr3_eval.errors import UserError
from trainer.config import DataConfig, load_config
from trainer.prepare import write_heldout_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_config")
    parser.add_argument("target")
    args = parser.parse_args()
    try:
        print(json.dumps(write_heldout_task(load_config(args.data_config, DataConfig), Path(args.target))))
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
