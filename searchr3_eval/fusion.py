"""Rank fusion of several models' runs (pyserini's and ranx's methods): reciprocal rank fusion and a weighted sum of
min-max normalised scores. A fused spec, ``fusion:rrf(bm25,minilm)``, ``fusion:rrf(bm25,minilm;k=60)`` or
``fusion:linear(bm25,minilm;w=0.3)`` (the first member's weight; ``w=0.2/0.3/0.5`` for three members), is scored like
any model from its members' stored rankings, without re-encoding anything."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from searchr3_eval.data import RetrievalTask
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run, top_k as top_k_of
from searchr3_eval.results import ModelIdentity, find_result, ranking_path, read_ranking, result_identity

METHODS = ("rrf", "linear")
RRF_K = 60


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at ``separator`` outside parentheses and brackets (a model's own options)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "([") - (char in ")]")
        if depth < 0:
            raise UserError(f"unbalanced parentheses in {text!r}")
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise UserError(f"unbalanced parentheses in {text!r}")
    return [*parts, current]


@dataclass(frozen=True)
class FusionSpec:
    """A fusion method, its member specs (as written) and its parameters spelled out."""

    method: str
    members: tuple[str, ...]
    k: int = RRF_K
    weights: tuple[float, ...] = ()

    def text(self, members: list[str]) -> str:
        """The canonical spec, given the members' canonical specs."""
        params = f"k={self.k}" if self.method == "rrf" else "w=" + "/".join(f"{w:g}" for w in self.weights)
        return f"fusion:{self.method}({','.join(members)};{params})"


def parse_fusion(arg: str) -> FusionSpec:
    """``rrf(a,b[;k=60])`` or ``linear(a,b[;w=0.3])`` (the part after ``fusion:``)."""
    method, sep, rest = arg.partition("(")
    if method not in METHODS or not sep or not rest.endswith(")"):
        raise UserError(f"fusion spec 'fusion:{arg}': use fusion:rrf(A,B[;k=60]) or fusion:linear(A,B[;w=0.5])")
    parts = split_top_level(rest[:-1], ";")
    if len(parts) > 2:
        raise UserError(f"fusion spec 'fusion:{arg}': one ';' separates the members from the parameters")
    members_text, params_text = parts[0], (parts[1].strip() if len(parts) == 2 else "")
    members = tuple(m.strip() for m in split_top_level(members_text) if m.strip())
    if len(members) < 2:
        raise UserError(f"fusion spec 'fusion:{arg}' needs at least two members")
    key, _, value = params_text.partition("=")
    try:
        if method == "rrf":
            if params_text and key.strip() != "k":
                raise ValueError("rrf takes k=N")
            k = int(value) if params_text else RRF_K
            if k < 1:
                raise ValueError("k must be at least 1")
            return FusionSpec(method, members, k=k)
        if params_text and key.strip() != "w":
            raise ValueError("linear takes w=W (the first member's weight) or w=W1/W2/...")
        weights = [float(w) for w in value.split("/")] if params_text else [1 / len(members)] * len(members)
        if len(weights) == 1 and len(members) == 2:
            weights.append(1 - weights[0])
        if len(weights) != len(members) or any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"{len(members)} non-negative weights are needed")
        return FusionSpec(method, members, weights=tuple(weights))
    except ValueError as exc:
        raise UserError(f"fusion spec 'fusion:{arg}': {exc}") from exc


def reciprocal_rank_fusion(runs: list[Run], k: int = RRF_K) -> Run:
    """Each document scores the sum over runs of 1 / (k + its rank there), ranks from 1 (Cormack et al. 2009)."""
    fused: Run = {}
    for run in runs:
        for qid, docs in run.items():
            target = fused.setdefault(qid, {})
            for rank, doc in enumerate(sorted(docs, key=lambda d: (-docs[d], d)), 1):
                target[doc] = target.get(doc, 0.0) + 1.0 / (k + rank)
    return fused


def linear_fusion(runs: list[Run], weights: list[float]) -> Run:
    """The weighted sum of each run's scores min-max normalised per query (a document a run lacks adds 0; a query whose
    run scores every document alike adds 0, as ranx's min-max norm does)."""
    fused: Run = {}
    for run, weight in zip(runs, weights):
        for qid, docs in run.items():
            target = fused.setdefault(qid, {})
            low, high = min(docs.values(), default=0.0), max(docs.values(), default=0.0)
            for doc, score in docs.items():
                normalised = (score - low) / (high - low) if high > low else 0.0
                target[doc] = target.get(doc, 0.0) + weight * normalised
    return fused


def fuse(spec: FusionSpec, runs: list[Run]) -> Run:
    if spec.method == "rrf":
        return reciprocal_rank_fusion(runs, spec.k)
    return linear_fusion(runs, list(spec.weights))


class FusionRetriever:
    """Scores a fused spec from its members' rankings stored under ``output_dir`` (the runner scores the members
    first); ``identity`` is the fused spec's, ``members`` each member's (spec, model identity, index)."""

    def __init__(self, spec: FusionSpec, identity: ModelIdentity, members: list[tuple[ModelIdentity, str]],
                 output_dir: Path):
        self.spec, self.identity, self.members, self.output_dir = spec, identity, members, output_dir
        self.name = f"Fusion {spec.method} ({' + '.join(m.spec for m, _ in members)})"
        self.revision = identity.revision
        self.search_stats: dict = {}

    @property
    def settings(self) -> dict:
        return self.identity.settings

    def search(self, task: RetrievalTask, top_k: int) -> Run:
        start = time.perf_counter()
        runs = []
        for member, index in self.members:
            identity = result_identity(member, task.name, task.split, task.fingerprint, top_k, index)
            path, found = find_result(self.output_dir, identity)
            if found is None or not ranking_path(path).is_file():
                raise UserError(f"{self.identity.spec}: no stored ranking of {member.spec} on {task.name} in "
                                f"{self.output_dir}")
            runs.append(read_ranking(ranking_path(path)))
        fused = top_k_of(fuse(self.spec, runs), top_k)
        self.search_stats = {"retrieval_seconds": time.perf_counter() - start, "device": "cpu"}
        return fused
