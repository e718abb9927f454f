"""Retrieval tasks in BEIR format: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from searchr3_eval.atomic import atomic_write
from searchr3_eval.errors import UserError
from searchr3_eval.fingerprint import fingerprint

log = logging.getLogger(__name__)

Kind = Literal["query", "document"]  # a text is searched with (a query) or searched for (a document)
EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets"
DEFAULT_TASK = "GSM8KRetrieval"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

CQADUPSTACK_FORUMS = ["android", "english", "gaming", "gis", "mathematica", "physics", "programmers", "stats", "tex",
                      "unix", "webmasters", "wordpress"]
# MTEB task name -> (BEIR dataset folder, evaluation split); CQADupStack's forums live in cqadupstack/<forum>
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
    **{f"CQADupstack{forum.capitalize()}Retrieval": (f"cqadupstack/{forum}", "test") for forum in CQADUPSTACK_FORUMS},
}
# MTEB reports CQADupStack as one task: the mean of its forums
AGGREGATES: dict[str, list[str]] = {
    "CQADupstackRetrieval": [f"CQADupstack{forum.capitalize()}Retrieval" for forum in CQADUPSTACK_FORUMS],
}
GROUPS: dict[str, list[str]] = {"BEIR": sorted(BEIR_TASKS), **AGGREGATES}


@dataclass
class RetrievalTask:
    """One BEIR-format task: ``corpus[doc_id] = {"title", "text"}``, ``qrels[qid][doc_id] = grade``."""

    name: str
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str
    fingerprint: str = ""
    default_split: str = "test"


@dataclass(frozen=True)
class TaskSource:
    """Where a task's files are, which split is scored, and a content hash of those files."""

    name: str
    folder: Path
    split: str
    default_split: str
    fingerprint: str
    size: int  # bytes of the three files
    origin: str  # what results record as their source: the same on every machine (``task_origin``)


class MissingTaskData(UserError):
    """A known task whose files are not here and cannot be downloaded."""


def check_data_dir(data_dir: Path | None) -> None:
    """``--data-dir`` must be an existing folder (every command that takes it says so the same way)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is not a folder")


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
    return next((c for c in candidates if c.is_dir()), None)


def locate_task(name: str, data_dir: Path | None = None, split: str | None = None, download: bool = True) -> TaskSource:
    """Find a task's folder (``data_dir``, embedded, or downloaded) and check its files, without parsing them."""
    default_split = BEIR_TASKS.get(name, (name, "test"))[1]
    split = split or default_split
    folder = _local_folder(name, data_dir)
    if folder is None and name == DEFAULT_TASK:
        folder = EMBEDDED_DIR / DEFAULT_TASK
    if folder is None and name in BEIR_TASKS:
        dataset = BEIR_TASKS[name][0]
        if not download or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise MissingTaskData(
                f"task {name} is not under --data-dir ({data_dir}) and downloads are off; put the BEIR folder {dataset}/ there"
            )
        data_dir = data_dir or Path("data")
        folder = download_beir(dataset, data_dir)
    if folder is None:
        raise UserError(f"no data for task {name!r} (looked in {data_dir})")
    paths = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    for path in paths:
        if not path.is_file():
            raise UserError(f"task {name}: missing {path.relative_to(folder)} in {folder}")
    size = sum(path.stat().st_size for path in paths)
    return TaskSource(name, folder, split, default_split, fingerprint(folder, files=paths), size,
                      task_origin(folder, data_dir))


def task_origin(folder: Path, data_dir: Path | None) -> str:
    """Where a task's files came from, as a result records it (no machine's absolute path): ``embedded:<name>`` for
    a task shipped in the package, else the folder relative to ``data_dir``, else the folder's name."""
    if folder.resolve().is_relative_to(EMBEDDED_DIR):
        return f"embedded:{folder.resolve().relative_to(EMBEDDED_DIR).as_posix()}"
    folder = Path(os.path.abspath(folder))  # a linked folder keeps the name it has under data_dir
    if data_dir is not None and folder.is_relative_to(os.path.abspath(data_dir)):
        return folder.relative_to(os.path.abspath(data_dir)).as_posix()
    return folder.name


def load_task(name: str, data_dir: Path | None = None, split: str | None = None, download: bool = True) -> RetrievalTask:
    """Load a task from ``data_dir``, the embedded datasets, or (BEIR tasks, online) the BEIR server."""
    return load_task_source(locate_task(name, data_dir, split, download))


def load_task_source(source: TaskSource) -> RetrievalTask:
    task = load_beir_folder(source.folder, source.split, name=source.name)
    task.fingerprint, task.default_split = source.fingerprint, source.default_split
    task.source = source.origin
    return task


def beir_url(archive: str) -> str:
    """Where a BEIR archive is downloaded from: ``$SEARCHR3_BEIR_URL`` (a mirror, or a local server) or BEIR's."""
    return os.environ.get("SEARCHR3_BEIR_URL", BEIR_URL).rstrip("/") + f"/{archive}.zip"


def download_beir(dataset: str, data_dir: Path) -> Path:
    """Download and unzip one BEIR dataset into ``data_dir/<dataset>`` (for users with network). The zip is written
    atomically and checked against its announced length, and the folder appears only once it is whole, so an
    interrupted download or unzip is redone by the next run instead of being read as data."""
    target = data_dir / dataset
    if (target / "corpus.jsonl").is_file():
        return target
    archive = dataset.split("/")[0]  # cqadupstack/<forum> comes in cqadupstack.zip
    url = beir_url(archive)
    zip_path = data_dir / f"{archive}.zip"

    def fetch(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {archive}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise OSError(f"the download ended after {out.tell()} of {total} bytes")

    advice = f"put the BEIR folder {dataset}/ under --data-dir"
    try:
        atomic_write(zip_path, fetch)
    except (OSError, http.client.HTTPException) as exc:
        raise UserError(f"could not download {url} ({exc}); run again, or {advice}") from exc

    try:  # each dataset folder of the archive is renamed into place whole (the staging folder is on the same disk)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".unzip-") as staging:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(staging)
            for corpus in sorted(Path(staging).glob(f"{archive}/**/corpus.jsonl")):
                destination = data_dir / corpus.parent.relative_to(staging)
                if not (destination / "corpus.jsonl").is_file():
                    shutil.rmtree(destination, ignore_errors=True)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(corpus.parent, destination)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{url} is not a readable zip ({exc}); {advice}") from exc
    finally:
        zip_path.unlink(missing_ok=True)
    if not (target / "corpus.jsonl").is_file():
        raise UserError(f"{url} has no {dataset}/corpus.jsonl; {advice}")
    return target


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; bytes that are not UTF-8 are an error naming file and line."""
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} line {line_no}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})") from exc
            if line.strip():
                yield line_no, line


def _read_jsonl(path: Path, kind: str) -> dict[str, dict]:
    """Rows of a BEIR jsonl file by ``_id``; a repeated id is an error naming it."""
    rows: dict[str, dict] = {}
    for line_no, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON in {path} line {line_no}: {exc.msg}") from exc
        if not isinstance(row, dict) or "_id" not in row:
            raise UserError(f"{path} line {line_no}: each line must be an object with an '_id' field")
        key = str(row["_id"])
        if key in rows:
            raise UserError(f"{path} line {line_no}: duplicate {kind} id {key!r}")
        rows[key] = row
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in _lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if line_no == 1 and fields[0] == "query-id":
            continue
        if len(fields) == 4:  # TREC style: qid 0 docid grade
            fields = [fields[0], fields[2], fields[3]]
        try:
            qid, doc_id, grade = fields
            qrels.setdefault(qid, {})[doc_id] = int(grade)
        except ValueError as exc:
            raise UserError(f"malformed qrels line {line_no} in {path}: expected 'query-id<TAB>corpus-id<TAB>score'") from exc
    return qrels


def _text(value) -> str:
    """A BEIR text field; a missing or null field is empty (never the string 'None')."""
    return "" if value is None else str(value)


def load_beir_folder(folder: Path, split: str = "test", name: str | None = None) -> RetrievalTask:
    """Read a BEIR folder; like BEIR's GenericDataLoader, keep only queries that have qrels."""
    folder = Path(folder)
    corpus = {
        doc_id: {"title": _text(row.get("title")), "text": _text(row.get("text"))}
        for doc_id, row in _read_jsonl(folder / "corpus.jsonl", "document").items()
    }
    all_queries = {qid: _text(row.get("text")) for qid, row in _read_jsonl(folder / "queries.jsonl", "query").items()}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise UserError(f"{folder}: qrels name {len(missing)} queries not in queries.jsonl (e.g. {missing[0]!r})")
    unknown_docs = sorted({d for docs in qrels.values() for d in docs} - set(corpus))
    if unknown_docs:
        log.warning("%s: qrels name %d documents not in corpus.jsonl (e.g. %r)", qrels_path, len(unknown_docs), unknown_docs[0])
    queries = {qid: all_queries[qid] for qid in qrels}
    if not corpus or not queries:
        raise UserError(f"{folder}: empty corpus or no judged queries for split {split!r}")
    return RetrievalTask(name or folder.name, split, corpus, queries, qrels, str(folder))


def document_text(doc: dict[str, str]) -> str:
    """BEIR's convention for dense models: title and text joined by a space."""
    return f"{doc['title']} {doc['text']}".strip()
