"""Leaderboard tables (Markdown, CSV) and plots (PNG) from the result JSON files."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from searchr3_eval.atomic import atomic_write, atomic_write_text
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import MAIN_METRIC, MEASURES

METRIC_TITLES = {"ndcg_at_10": "nDCG@10", "recall_at_100": "Recall@100", "map_at_100": "MAP@100", "mrr_at_10": "MRR@10"}


def load_results(output_dir: Path) -> list[dict]:
    results = []
    for path in sorted((output_dir / "runs").glob("*/*.json")):
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UserError(f"unreadable result file {path}: {exc.msg}") from exc
    return results


def table(results: list[dict], metric: str) -> tuple[list[str], list[list]]:
    """Rows ``[model, score per task..., average]``, best average first; missing pairs are None."""
    tasks = sorted({r["task"] for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    cell = {(r["model"], r["task"]): r["scores"][metric] for r in results}
    rows = []
    for model in models:
        scores = [cell.get((model, t)) for t in tasks]
        known = [s for s in scores if s is not None]
        average = sum(known) / len(known) if len(known) == len(tasks) else None
        rows.append([model, *scores, average])
    rows.sort(key=lambda row: (row[-1] is None, -(row[-1] or 0.0)))
    return ["Model", *tasks, "Average"], rows


def _fmt(value) -> str:
    return "" if value is None else f"{100 * value:.2f}" if isinstance(value, float) else str(value)


def markdown(results: list[dict]) -> str:
    parts = ["# Leaderboard", "", "Scores x100 on each task's evaluation split; Average only over models with every task.", ""]
    for metric in MEASURES:
        header, rows = table(results, metric)
        parts += [f"## {METRIC_TITLES[metric]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        parts.append("")
    parts += ["## Runs", "", "| Model | Task | Documents | Queries | Docs/s | Wall s | Revision |", "|---|---|---|---|---|---|---|"]
    for r in results:
        dps = r.get("docs_per_second")
        parts.append(
            f"| {r['model']} | {r['task']} | {r['num_documents']} | {r['num_queries']} | "
            f"{'' if dps is None else f'{dps:.1f}'} | {r['wall_seconds']:.1f} | {r['revision']} |"
        )
    return "\n".join(parts) + "\n"


def csv_text(results: list[dict], metric: str = MAIN_METRIC) -> str:
    header, rows = table(results, metric)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([row[0], *("" if v is None else f"{v:.4f}" for v in row[1:])] for row in rows)
    return buffer.getvalue()


def plot_scores(results: list[dict], path: Path, metric: str = MAIN_METRIC) -> Path:
    """Grouped bar chart: one group per task, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    header, rows = table(results, metric)
    tasks = header[1:-1]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) + 3), 4.5 + 0.25 * len(rows)))
    for i, row in enumerate(rows):
        values = [np.nan if v is None else v for v in row[1:-1]]
        bars = ax.bar(np.arange(len(tasks)) + i * width, values, width, label=row[0])
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2, tasks)
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_ylim(0, 1)
    ax.set_title(f"{METRIC_TITLES[metric]} by task")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(output_dir: Path) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv and plots/ndcg_at_10.png under ``output_dir``."""
    results = load_results(output_dir)
    if not results:
        raise UserError(f"no results under {output_dir / 'runs'}; run 'searchr3-eval run' first")
    return [
        atomic_write_text(output_dir / "leaderboard.md", markdown(results)),
        atomic_write_text(output_dir / "leaderboard.csv", csv_text(results)),
        plot_scores(results, output_dir / "plots" / f"{MAIN_METRIC}.png"),
    ]
