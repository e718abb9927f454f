"""Write a data config's held-out queries as a BEIR task, to score model selection the way the evaluation scores a
test split: every judged document of each held-out query (the ``beir_split`` qrels, not only the at most
``max_positives`` sampled into triples) against the whole corpora of its ``beir_dirs``. Ids are prefixed with their
folder's name. The qrels file is named ``test.tsv`` because the runner evaluates a local folder's ``test`` split; its
judgements are the train split's. Run the data stage first (it writes ``heldout.jsonl``).

    python scripts/heldout_task.py trainer/configs/data_query_smollm2.yaml runs/heldout/heldout-query
    HF_HUB_OFFLINE=1 searchr3-eval run --tasks heldout-query --data-dir runs/heldout --models ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchr3_eval.data import load_beir_folder
from searchr3_eval.errors import UserError
from trainer.config import DataConfig, load_config
from trainer.data import load_triples


def write_heldout_task(cfg: DataConfig, target: Path) -> dict[str, int]:
    """The BEIR folder of ``cfg``'s held-out queries at ``target``; counts of what it holds."""
    heldout = Path(cfg.output_dir) / "heldout.jsonl"
    if not heldout.is_file():
        raise UserError(f"{heldout} is missing: run `searchr3-eval train data --config ...` first")
    held = {t.query for t in load_triples(heldout)}
    corpus, queries, qrels = [], [], []
    for folder in map(Path, cfg.beir_dirs):
        task = load_beir_folder(folder, cfg.beir_split)
        corpus += [{"_id": f"{folder.name}/{d}", "title": doc.get("title", ""), "text": doc["text"]}
                   for d, doc in task.corpus.items()]
        for qid, text in task.queries.items():
            if text in held:
                queries.append({"_id": f"{folder.name}/{qid}", "text": text})
                qrels += [f"{folder.name}/{qid}\t{folder.name}/{d}\t{grade}" for d, grade in task.qrels[qid].items()]
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus", corpus), ("queries", queries)):
        (target / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (target / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(q + "\n" for q in qrels),
                                               encoding="utf-8")
    return {"documents": len(corpus), "queries": len(queries), "judgements": len(qrels)}


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
