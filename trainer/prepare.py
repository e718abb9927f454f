"""Training data from several sources: triples mined from BEIR train qrels (BM25 hard negatives) and pair files, each
source split by distinct query into train and a held-out slice for model selection."""
from __future__ import annotations

import functools
import json
import random
from collections import Counter
from pathlib import Path

from searchr3_eval.atomic import atomic_write, atomic_write_folder, atomic_write_json
from searchr3_eval.data import RetrievalTask, document_text, load_beir_folder
from searchr3_eval.errors import UserError
from trainer.config import DataConfig
from trainer.data import Triple, case_variants, judged_queries, load_triples, mine_bm25_triples, write_triples


def held_out_queries(triples: list[Triple], fraction: float, rng: random.Random) -> set[str]:
    """A ``fraction`` of the triples' distinct queries, drawn with ``rng``: those held out for model selection."""
    queries = sorted({t.query for t in triples})
    return set(rng.sample(queries, round(len(queries) * fraction)))


def split_by_query(triples: list[Triple], fraction: float, rng: random.Random) -> tuple[list[Triple], list[Triple]]:
    """(train, held out): a ``fraction`` of the distinct queries, with all their triples, is held out."""
    held = held_out_queries(triples, fraction, rng)
    return [t for t in triples if t.query not in held], [t for t in triples if t.query in held]


def title_triples(task: RetrievalTask) -> list[Triple]:
    """Each titled document's title as a query whose positive is the document (as dense models read it): pairs that
    need no judgement, in the corpus's own words."""
    return [Triple(doc["title"], document_text(doc), [], None) for doc in task.corpus.values() if doc.get("title", "").strip()]


def prepare_data(cfg: DataConfig) -> dict:
    """Write ``train.jsonl`` (shuffled), ``heldout.jsonl`` and ``summary.json`` (counts per source) to ``output_dir``."""
    if not 0 <= cfg.heldout_fraction < 1:
        raise UserError(f"heldout_fraction must be in [0, 1), not {cfg.heldout_fraction}")
    # each folder read once: a title_query_dir is often one of the beir_dirs too
    read = functools.cache(lambda folder: load_beir_folder(Path(folder), cfg.beir_split))
    sources = {}
    for folder in cfg.beir_dirs:
        sources[folder] = mine_bm25_triples(read(folder), cfg.num_negatives, cfg.seed, cfg.max_positives)
    for path in cfg.pair_files:
        sources[path] = [Triple(t.query, t.positive, t.negatives[: cfg.num_negatives], t.analysis)
                         for t in load_triples(path, cfg.keep_splits)]
    if not sources:
        raise UserError("the data config needs beir_dirs or pair_files")
    rng = random.Random(cfg.seed)
    train, heldout, counts = [], [], {}
    for name, triples in sources.items():
        kept, held = split_by_query(triples, cfg.heldout_fraction, rng)
        train += kept
        heldout += held
        negatives = Counter(len(t.negatives) for t in triples)
        counts[name] = {"train": len(kept), "heldout": len(held), "triples_by_negatives": dict(sorted(negatives.items()))}
    case_copies = (case_variants(train, cfg.case_fraction, rng, cfg.case_documents, cfg.case_fold)
                   if cfg.case_fraction else [])
    train += case_copies
    held_queries = {t.query for t in heldout}
    for folder in cfg.title_query_dirs:
        titled = [t for t in title_triples(read(folder)) if t.query not in held_queries]
        train += titled
        counts[f"titles of {folder}"] = {"train": len(titled), "heldout": 0}
    rng.shuffle(train)
    out = Path(cfg.output_dir)
    atomic_write(out / "train.jsonl", lambda tmp: write_triples(tmp, train))
    atomic_write(out / "heldout.jsonl", lambda tmp: write_triples(tmp, heldout))
    summary = {"train": len(train), "heldout": len(heldout), "case_copies": len(case_copies), "sources": counts}
    atomic_write_json(out / "summary.json", summary)
    return summary


def write_heldout_task(cfg: DataConfig, target: Path) -> dict[str, int]:
    """``cfg``'s held-out queries as a BEIR folder at ``target`` (replaced atomically), to score model selection as the
    evaluation scores a test split: every document the ``beir_split`` qrels judge for them (not only the sampled
    positives) against the whole corpora of ``beir_dirs``, ids prefixed with their folder's name. The qrels file is
    ``test.tsv`` (the split a local folder is scored on) and holds the train judgements. Returns what it holds."""
    heldout = Path(cfg.output_dir) / "heldout.jsonl"
    if not heldout.is_file():
        raise UserError(f"{heldout} is missing: run `searchr3-eval train data --config ...` first")
    corpus, queries, qrels = [], [], []
    tasks = [load_beir_folder(Path(folder), cfg.beir_split) for folder in cfg.beir_dirs]
    for task, qids in judged_queries(tasks, {t.query for t in load_triples(heldout)}):
        corpus += [{"_id": f"{task.name}/{d}", "title": doc.get("title", ""), "text": doc["text"]}
                   for d, doc in task.corpus.items()]
        for qid in qids:
            queries.append({"_id": f"{task.name}/{qid}", "text": task.queries[qid]})
            qrels += [f"{task.name}/{qid}\t{task.name}/{d}\t{grade}" for d, grade in task.qrels[qid].items()]
    return write_beir_task(target, corpus, queries, qrels)


def write_pairs_task(path: str | Path, target: Path, keep_splits: list[str] | None = None) -> dict[str, int]:
    """A pair file's distinct queries as a BEIR folder at ``target`` (replaced atomically): the corpus is every distinct
    positive and negative text, and each query's positives are its relevant documents (grade 1). It scores model
    selection outside the BEIR training domains, on queries no query adapter trains on. Returns what it holds."""
    triples = load_triples(path, keep_splits)
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    qrels: set[tuple[str, str]] = set()
    for t in triples:
        for text in (t.positive, *t.negatives):
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        qid = query_ids.setdefault(t.query, f"q{len(query_ids)}")
        qrels.add((qid, doc_ids[t.positive]))
    return write_beir_task(target, [{"_id": d, "title": "", "text": text} for text, d in doc_ids.items()],
                           [{"_id": q, "text": text} for text, q in query_ids.items()],
                           [f"{q}\t{d}\t1" for q, d in sorted(qrels)])


def write_beir_task(target: Path, corpus: list[dict], queries: list[dict], qrels: list[str]) -> dict[str, int]:
    """A BEIR folder at ``target`` (replaced atomically): ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv``
    (the split a local folder is scored on) of ``qrels`` lines, each query id, corpus id and score tab-separated.
    Returns what it holds."""

    def write(tmp: Path) -> None:
        (tmp / "qrels").mkdir()
        for name, rows in (("corpus", corpus), ("queries", queries)):
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (tmp / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(q + "\n" for q in qrels),
                                              encoding="utf-8")

    atomic_write_folder(target, write)
    return {"documents": len(corpus), "queries": len(queries), "judgements": len(qrels)}
