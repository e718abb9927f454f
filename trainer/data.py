"""Training triples: (query, positive, negatives, analysis?) from jsonl, or mined from BEIR qrels with BM25."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from searchr3_eval.data import RetrievalTask, document_text
from searchr3_eval.errors import UserError
from searchr3_eval.models.bm25 import BM25Retriever
from searchr3_eval.models.lm.prompt_format import fold_case


@dataclass
class Triple:
    query: str
    positive: str
    negatives: list[str]
    analysis: str | None = None  # a target analysis for reasoning-format SFT (BEIR: the positive's title)


def load_triples(path: str | Path, keep_splits: list[str] | None = None) -> list[Triple]:
    """Rows ``{"query", "positive", "negatives"?, "analysis"?}``; with ``keep_splits``, a row with a ``split`` field is kept only if
    its split is listed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    triples = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if keep_splits is not None and "split" in row and row["split"] not in keep_splits:
                continue
            analysis = row.get("analysis")
            triples.append(Triple(str(row["query"]), str(row["positive"]), [str(n) for n in row.get("negatives", [])],
                                  None if analysis is None else str(analysis)))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path} line {line_no}: expected {{\"query\", \"positive\", \"negatives\"}} ({exc})") from exc
    if not triples:
        raise UserError(f"{path} holds no triples")
    return triples


def write_triples(path: str | Path, triples: list[Triple]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for t in triples:
            row = {"query": t.query, "positive": t.positive, "negatives": t.negatives}
            if t.analysis is not None:
                row["analysis"] = t.analysis
            handle.write(json.dumps(row) + "\n")


def mine_bm25_triples(task: RetrievalTask, num_negatives: int = 1, seed: int = 0,
                      max_positives: int | None = None) -> list[Triple]:
    """One triple per judged (query, positive); negatives are the best BM25 documents not judged relevant,
    topped up with random unjudged documents when BM25 matches too few. ``max_positives`` keeps at most that many
    positives of each query (a random sample), so a query judged against dozens of documents does not outweigh the
    others. A positive with a title gives the triple its analysis: the title of a document that answers the query
    (a HyDE-style target for reasoning-format SFT)."""
    run = BM25Retriever(show_progress=False).search(task, top_k=num_negatives + 20)
    rng = random.Random(seed)
    doc_ids = list(task.corpus)
    triples = []
    for qid, judged in task.qrels.items():
        ranked = [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])]
        pool = [d for d in ranked + rng.sample(doc_ids, min(len(doc_ids), num_negatives + len(judged))) if judged.get(d, 0) <= 0]
        negatives = [document_text(task.corpus[d]) for d in dict.fromkeys(pool)][:num_negatives]
        positives = [d for d, grade in judged.items() if grade > 0 and d in task.corpus]
        if max_positives is not None and len(positives) > max_positives:
            positives = rng.sample(positives, max_positives)
        for doc_id in positives:
            title = task.corpus[doc_id].get("title", "").strip()
            triples.append(Triple(task.queries[qid], document_text(task.corpus[doc_id]), negatives, title or None))
    return triples


def case_variants(triples: list[Triple], fraction: float, rng: random.Random, documents: bool = True,
                  fold: str = "off") -> list[Triple]:
    """Upper-cased copies of a random ``fraction`` of ``triples``, for a model that reads letter case where old
    collections and users write in capitals: each copy upper-cases its query, and with ``documents`` half of them also
    their documents (so both an upper-cased query against normal documents and an all-capitals collection are seen).
    With a ``fold`` (``prompt_format.fold_case``) each upper-cased text is written as that fold embeds it."""
    chosen = rng.sample(triples, round(len(triples) * fraction))

    def shout(text: str) -> str:
        return fold_case(text.upper(), fold)

    copies = []
    for i, t in enumerate(chosen):
        documents_too = documents and i % 2 == 1
        copies.append(Triple(shout(t.query), shout(t.positive) if documents_too else t.positive,
                             [shout(n) for n in t.negatives] if documents_too else t.negatives, t.analysis))
    return copies


def judged_queries(tasks: list[RetrievalTask], texts: set[str]) -> list[tuple[RetrievalTask, list[str]]]:
    """Each task with the ids of its queries whose text is in ``texts`` and that its qrels judge: every document
    judged for a training or held-out query, not only the positives sampled into triples."""
    return [(task, [q for q, text in task.queries.items() if text in texts and task.qrels.get(q)]) for task in tasks]
