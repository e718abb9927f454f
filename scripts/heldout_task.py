"""Write a data config's held-out queries as a BEIR task with every document their train judgements name
(``trainer.prepare.write_heldout_task``), to rank candidates on them as the evaluation ranks a test split. Run the data
stage first (it writes ``heldout.jsonl``). With ``--pairs``, the first argument is a pair file instead, written whole
as a task (``write_pairs_task``): queries from outside the BEIR training domains.

    python scripts/heldout_task.py trainer/configs/data_query_smollm2.yaml runs/heldout/heldout-query
    python scripts/heldout_task.py --pairs ../shared/data/train/wikiqa_train_pairs.jsonl runs/heldout/wikiqa-train
    HF_HUB_OFFLINE=1 searchr3-eval run --tasks heldout-query,wikiqa-train --data-dir runs/heldout --models ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchr3_eval.errors import UserError
from trainer.config import DataConfig, load_config
from trainer.prepare import write_heldout_task, write_pairs_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a data config (or with --pairs, a pair file)")
    parser.add_argument("target")
    parser.add_argument("--pairs", action="store_true", help="the source is a pair file, written whole as a task")
    args = parser.parse_args()
    try:
        if args.pairs:
            print(json.dumps(write_pairs_task(args.source, Path(args.target))))
        else:
            print(json.dumps(write_heldout_task(load_config(args.source, DataConfig), Path(args.target))))
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
