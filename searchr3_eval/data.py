"""Retrieval tasks in BEIR format: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
from __future__ import annotations

import json
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from searchr3_eval.atomic import atomic_write
from searchr3_eval.errors import UserError

EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets"
DEFAULT_TASK = "GSM8KRetrieval"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{}.zip"

# MTEB task name -> (BEIR dataset folder, evaluation split)
BEIR_TASKS: dict[str, tuple[str, str]] = {
    "ArguAna": ("arguana", "test"),
    "ClimateFEVER": ("climate-fever", "test"),
    "DBPedia": ("dbpedia-entity", "test"),
    "FEVER": ("fever", "test"),
    "FiQA2018": ("fiqa", "test"),
    "HotpotQA": ("hotpotqa", "test"),
    "MSMARCO": ("msmarco", "dev"),
    "NFCorpus": ("nfcorpus", "test"),
    "NQ": ("nq", "test"),
    "QuoraRetrieval": ("quora", "test"),
    "SCIDOCS": ("scidocs", "test"),
    "SciFact": ("scifact", "test"),
    "TRECCOVID": ("trec-covid", "test"),
    "Touche2020": ("webis-touche2020", "test"),
}
GROUPS: dict[str, list[str]] = {"BEIR": sorted(BEIR_TASKS)}


@dataclass
class RetrievalTask:
    """One BEIR-format task: ``corpus[doc_id] = {"title", "text"}``, ``qrels[qid][doc_id] = grade``."""

    name: str
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str


def resolve_task_names(spec: str, data_dir: Path | None = None) -> list[str]:
    """Expand a comma list of task names and groups; unknown names raise ``UserError``."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item in GROUPS:
            names.extend(GROUPS[item])
        elif item in BEIR_TASKS or item == DEFAULT_TASK or _local_folder(item, data_dir):
            names.append(item)
        else:
            known = ", ".join([*GROUPS, DEFAULT_TASK, *sorted(BEIR_TASKS)])
            where = f" and no folder {item!r} in {data_dir}" if data_dir else ""
            raise UserError(f"unknown task {item!r}{where}; known tasks: {known}")
    if not names:
        raise UserError("no task given")
    return list(dict.fromkeys(names))


def _local_folder(name: str, data_dir: Path | None) -> Path | None:
    if data_dir is None:
        return None
    candidates = [data_dir / name]
    if name in BEIR_TASKS:
        candidates.append(data_dir / BEIR_TASKS[name][0])
    return next((c for c in candidates if (c / "corpus.jsonl").is_file()), None)


def load_task(name: str, data_dir: Path | None = None, split: str | None = None, download: bool = True) -> RetrievalTask:
    """Load a task from ``data_dir``, the embedded datasets, or (BEIR tasks, online) the BEIR server."""
    default_split = BEIR_TASKS.get(name, (name, "test"))[1]
    split = split or default_split
    folder = _local_folder(name, data_dir)
    if folder is None and name == DEFAULT_TASK:
        folder = EMBEDDED_DIR / DEFAULT_TASK
    if folder is None and name in BEIR_TASKS:
        if not download or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(
                f"task {name} is not under --data-dir ({data_dir}) and downloads are off; "
                f"put the BEIR folder {BEIR_TASKS[name][0]}/ there"
            )
        folder = download_beir(BEIR_TASKS[name][0], data_dir or Path("data"))
    if folder is None:
        raise UserError(f"no data for task {name!r} (looked in {data_dir})")
    return load_beir_folder(folder, split, name=name)


def download_beir(dataset: str, data_dir: Path) -> Path:
    """Download and unzip one BEIR dataset into ``data_dir/<dataset>`` (for users with network)."""
    target = data_dir / dataset
    if (target / "corpus.jsonl").is_file():
        return target
    url = BEIR_URL.format(dataset)
    zip_path = data_dir / f"{dataset}.zip"

    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dataset}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

    try:
        atomic_write(zip_path, fetch)
    except OSError as exc:
        raise UserError(f"could not download {url} ({exc}); put the BEIR folder {dataset}/ under --data-dir") from exc
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(data_dir)
    zip_path.unlink()
    return target


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"malformed JSON in {path} line {line_no}: {exc.msg}") from exc
            if not isinstance(row, dict) or "_id" not in row:
                raise UserError(f"{path} line {line_no}: each line must be an object with an '_id' field")
            rows.append(row)
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip() or (line_no == 1 and fields[0] == "query-id"):
                continue
            if len(fields) == 4:  # TREC style: qid 0 docid grade
                fields = [fields[0], fields[2], fields[3]]
            try:
                qid, doc_id, grade = fields
                qrels.setdefault(qid, {})[doc_id] = int(grade)
            except ValueError as exc:
                raise UserError(f"malformed qrels line {line_no} in {path}: expected 'query-id<TAB>corpus-id<TAB>score'") from exc
    return qrels


def load_beir_folder(folder: Path, split: str = "test", name: str | None = None) -> RetrievalTask:
    """Read a BEIR folder; like BEIR's GenericDataLoader, keep only queries that have qrels."""
    folder = Path(folder)
    corpus = {
        str(row["_id"]): {"title": str(row.get("title") or ""), "text": str(row.get("text") or "")}
        for row in _read_jsonl(folder / "corpus.jsonl")
    }
    all_queries = {str(row["_id"]): str(row.get("text") or "") for row in _read_jsonl(folder / "queries.jsonl")}
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise UserError(f"{folder}: qrels name {len(missing)} queries not in queries.jsonl (e.g. {missing[0]!r})")
    queries = {qid: all_queries[qid] for qid in qrels}
    if not corpus or not queries:
        raise UserError(f"{folder}: empty corpus or no judged queries for split {split!r}")
    return RetrievalTask(name or folder.name, split, corpus, queries, qrels, str(folder))


def document_text(doc: dict[str, str]) -> str:
    """BEIR's convention for dense models: title and text joined by a space."""
    return f"{doc['title']} {doc['text']}".strip()
