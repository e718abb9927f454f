"""Leaderboard tables (Markdown, CSV) and plots (PNG) from the stored results.

Each model identity (spec, revision, settings, top_k) gets its own row, labelled by its display name plus the
settings that tell it apart from rows of the same name; each (task, split, task files) gets its own column, with a
non-default split marked. A paired test over per-query scores (t-test or randomisation), corrected for the many
comparisons of the model x task grid (Benjamini-Hochberg by default, as ranx offers), marks significant differences
from a baseline; the p-values are written to ``significance.csv``.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchr3_eval.atomic import atomic_write, atomic_write_text
from searchr3_eval.data import AGGREGATES
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import MAIN_METRIC, MEASURES
from searchr3_eval.results import TaskResult, load_results

METRIC_TITLES = {"ndcg_at_10": "nDCG@10", "recall_at_100": "Recall@100", "map_at_100": "MAP@100", "mrr_at_10": "MRR@10"}
SIGNIFICANCE_LEVEL = 0.05
MARK = "†"
TESTS = {"t": "two-sided paired t-test", "permutation": "two-sided paired randomisation test (10,000 resamples)"}
CORRECTIONS = {"bh": "Benjamini-Hochberg false discovery rate", "none": "no correction for multiple comparisons"}


@dataclass(frozen=True)
class Significance:
    """How rows are compared with the baseline: the paired test and the correction over the model x task grid."""

    test: str = "t"
    correction: str = "bh"

    def __post_init__(self):
        if self.test not in TESTS:
            raise UserError(f"unknown significance test {self.test!r}; use one of {', '.join(TESTS)}")
        if self.correction not in CORRECTIONS:
            raise UserError(f"unknown correction {self.correction!r}; use one of {', '.join(CORRECTIONS)}")

    def describe(self) -> str:
        return f"{TESTS[self.test]} over per-query scores, {CORRECTIONS[self.correction]}, p < {SIGNIFICANCE_LEVEL}"


@dataclass(frozen=True)
class Column:
    task: str
    split: str
    fingerprint: str
    label: str


@dataclass
class Row:
    label: str
    spec: str
    cells: dict[str, float | None] = field(default_factory=dict)  # column label -> score
    pvalues: dict[str, float] = field(default_factory=dict)  # column label -> p against the baseline (uncorrected)
    adjusted: dict[str, float] = field(default_factory=dict)  # the same, corrected for multiple comparisons
    average: float | None = None

    @property
    def significant(self) -> dict[str, bool]:
        return {c: p < SIGNIFICANCE_LEVEL for c, p in self.adjusted.items()}


@dataclass
class Table:
    metric: str
    columns: list[str]
    rows: list[Row]
    baseline: str | None  # label of the baseline row
    significance: Significance = field(default_factory=Significance)


def identity_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _short(value: Any, width: int = 32) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    text = text.replace("\n", "\\n").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def row_labels(results: list[TaskResult]) -> dict[str, str]:
    """Model identity -> a unique label: the display name, plus the fields that differ among rows sharing it."""
    identities = {identity_json(r.model_identity): r for r in results}
    by_name: dict[str, list[str]] = defaultdict(list)
    for key, r in identities.items():
        by_name[r.model].append(key)
    labels = {}
    for name, keys in by_name.items():
        if len(keys) == 1:
            labels[keys[0]] = name
            continue
        flat = {k: _flatten({"spec": identities[k].model_spec, **{
            f: v for f, v in identities[k].model_identity.items() if f != "model_spec"}}) for k in keys}
        fields_ = sorted({f for d in flat.values() for f in d})
        differing = [f for f in fields_ if len({identity_json({"v": d.get(f)}) for d in flat.values()}) > 1]
        # shortest first: the fields whose values differ among the rows that have them (e.g. reasoning=on/off), not
        # those only some rows have with one value (generation settings with reasoning on); all when that is ambiguous
        valued = [f for f in differing if len({identity_json({"v": d[f]}) for d in flat.values() if f in d}) > 1]
        for shown in ([valued] if valued else []) + [differing]:
            # a setting a row does not have (e.g. generation settings with reasoning off) is left out
            parts = {k: [f"{f.removeprefix('settings.')}={_short(flat[k][f])}" for f in shown if f in flat[k]]
                     for k in keys}
            candidate = {k: f"{name} [" + (", ".join(p) or "without " + shown[0].removeprefix("settings.")) + "]"
                         for k, p in parts.items()}
            if len(set(candidate.values())) == len(keys):
                break
        labels.update(candidate)
    return labels


def columns(results: list[TaskResult]) -> dict[tuple[str, str, str], Column]:
    """(task, split, fingerprint) -> column; a non-default split and differing task files show in the label."""
    keys = sorted({(r.task, r.split, r.task_fingerprint, r.non_default_split) for r in results})
    base = {(t, s, f): f"{t} ({s})" if marked else t for t, s, f, marked in keys}
    counts = defaultdict(int)
    for label in base.values():
        counts[label] += 1
    return {k: Column(*k, label if counts[label] == 1 else f"{label} [data {k[2][:8]}]") for k, label in base.items()}


def paired_pvalue(a: dict[str, float], b: dict[str, float], test: str = "t") -> float | None:
    """Two-sided paired test over the queries both score; None when there is nothing to test (fewer than two
    common queries), 1.0 when every pair is equal."""
    from scipy.stats import permutation_test, ttest_rel

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    if all(a[q] == b[q] for q in common):
        return 1.0
    x, y = [a[q] for q in common], [b[q] for q in common]
    if test == "t":
        return float(ttest_rel(x, y).pvalue)
    result = permutation_test((x, y), lambda u, v: sum(u) / len(u) - sum(v) / len(v), permutation_type="samples",
                              n_resamples=10_000, alternative="two-sided", random_state=0)
    return float(result.pvalue)


def adjust_pvalues(pvalues: list[float], correction: str) -> list[float]:
    """``pvalues`` corrected for being tested together (``bh``: scipy's false_discovery_control)."""
    from scipy.stats import false_discovery_control

    if correction == "none" or not pvalues:
        return list(pvalues)
    return [float(p) for p in false_discovery_control(pvalues, method="bh")]


def _pick_baseline(rows: dict[str, Row], baseline: str | None) -> str | None:
    if baseline is None:
        return next((key for key, row in rows.items() if row.spec == "bm25"), None)
    found = [key for key, row in rows.items() if baseline in (row.label, row.spec)]
    if not found:
        raise UserError(f"--baseline {baseline!r} matches no model in the results; use a model spec or a row label")
    return found[0]


def table(results: list[TaskResult], metric: str = MAIN_METRIC, baseline: str | None = None,
          significance: Significance = Significance()) -> Table:
    """Rows by model identity and columns by task, best average first; aggregates (CQADupStack) as MTEB reports them."""
    labels, cols = row_labels(results), columns(results)
    rows: dict[str, Row] = {}
    per_query: dict[tuple[str, str], dict[str, float]] = {}
    for r in results:
        key, column = identity_json(r.model_identity), cols[(r.task, r.split, r.task_fingerprint)]
        row = rows.setdefault(key, Row(labels[key], r.model_spec))
        row.cells[column.label] = r.scores[metric]
        per_query[(key, column.label)] = r.per_query.get(metric, {})
    order = sorted({c.label for c in cols.values()})
    for aggregate, members in AGGREGATES.items():
        member_labels = [c.label for c in cols.values() if c.task in members and c.label == c.task]
        if not any(all(m in row.cells for m in members) for row in rows.values()):
            continue
        for row in rows.values():
            values = [row.cells.pop(m) for m in member_labels if m in row.cells]
            row.cells[aggregate] = sum(values) / len(values) if len(values) == len(members) else None
        order = sorted([c for c in order if c not in member_labels] + [aggregate])
    base_key = _pick_baseline(rows, baseline)
    for key, row in rows.items():
        known = [row.cells.get(c) for c in order]
        row.average = sum(known) / len(known) if known and all(v is not None for v in known) else None
        if base_key is not None and key != base_key:
            for c in order:
                if (key, c) in per_query and (base_key, c) in per_query:
                    p = paired_pvalue(per_query[(key, c)], per_query[(base_key, c)], significance.test)
                    if p is not None:
                        row.pvalues[c] = p
    tested = [(row, c) for row in rows.values() for c in row.pvalues]  # the whole grid is corrected together
    for (row, c), adjusted in zip(tested, adjust_pvalues([row.pvalues[c] for row, c in tested], significance.correction)):
        row.adjusted[c] = adjusted
    ranked = sorted(rows.values(), key=lambda row: (row.average is None, -(row.average or 0.0), row.label))
    return Table(metric, order, ranked, rows[base_key].label if base_key else None, significance)


def format_score(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def tables(results: list[TaskResult], baseline: str | None = None,
           significance: Significance = Significance()) -> dict[str, Table]:
    """One table per metric (each computes its own significance tests, the costly part: compute them once)."""
    return {metric: table(results, metric, baseline, significance) for metric in MEASURES}


def table_markdown(t: Table) -> list[str]:
    """A table's Markdown lines: a row per model, cells x100, marked where significantly different from the baseline."""
    lines = ["| " + " | ".join(["Model", *t.columns, "Average"]) + " |", "|" + "---|" * (len(t.columns) + 2)]
    for row in t.rows:
        cells = [format_score(row.cells.get(c)) + (MARK if row.significant.get(c) else "") for c in t.columns]
        lines.append("| " + " | ".join([row.label, *cells, format_score(row.average)]) + " |")
    return lines


def markdown(results: list[TaskResult], baseline: str | None = None, significance: Significance = Significance(),
             computed: dict[str, Table] | None = None) -> str:
    """The leaderboard page; ``computed``: the ``tables`` of these results, when the caller has them."""
    computed = computed or tables(results, baseline, significance)
    parts = ["# Leaderboard", "", "Scores x100 on each task's evaluation split (another split is named in the column); "
             "Average only over models with every task."]
    first = computed[MAIN_METRIC]
    if first.baseline:
        parts.append(f"{MARK} marks a significant difference from **{first.baseline}** on that task "
                     f"({significance.describe()}, each metric's grid corrected on its own; p-values in "
                     "significance.csv).")
    parts.append("")
    for metric, t in computed.items():
        parts += [f"## {METRIC_TITLES[metric]}", "", *table_markdown(t), ""]
    labels = row_labels(results)
    parts += ["## Runs", "", "| Model | Task | Split | Documents | Queries | Docs/s | Wall s | Revision |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (labels[identity_json(r.model_identity)], r.task, r.split)):
        dps = r.timing.get("docs_per_second")
        parts.append(
            f"| {labels[identity_json(r.model_identity)]} | {r.task} | {r.split} | {r.num_documents} | {r.num_queries} | "
            f"{'' if dps is None else f'{dps:.1f}'} | {r.timing.get('wall_seconds', 0.0):.1f} | {r.revision} |"
        )
    return "\n".join(parts) + "\n"


def significance_csv(computed: dict[str, Table]) -> str:
    """Every tested (metric, row, column) of the ``tables``: its p-value against the baseline, corrected, and the
    verdict."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "model", "task", "baseline", "test", "correction", "p_value", "p_adjusted", "significant"])
    for metric, t in computed.items():
        for row in t.rows:
            for c in t.columns:
                if c in row.pvalues:
                    writer.writerow([metric, row.label, c, t.baseline, t.significance.test, t.significance.correction,
                                     f"{row.pvalues[c]:.6g}", f"{row.adjusted[c]:.6g}", row.significant[c]])
    return buffer.getvalue()


def csv_text(t: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Model", *t.columns, "Average"])
    for row in t.rows:
        values = [*(row.cells.get(c) for c in t.columns), row.average]
        writer.writerow([row.label, *("" if v is None else f"{v:.4f}" for v in values)])
    return buffer.getvalue()


def plot_scores(t: Table, path: Path) -> Path:
    """Grouped bar chart of a table: one group per task, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = t.metric
    width = 0.8 / max(len(t.rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(t.columns) + 3), 4.5 + 0.25 * len(t.rows)))
    for i, row in enumerate(t.rows):
        values = [np.nan if row.cells.get(c) is None else row.cells[c] for c in t.columns]
        bars = ax.bar(np.arange(len(t.columns)) + i * width, values, width, label=row.label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(t.columns)) + width * (len(t.rows) - 1) / 2, t.columns)
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_ylim(0, 1)
    ax.set_title(f"{METRIC_TITLES[metric]} by task")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def write_report(output_dir: Path, baseline: str | None = None,
                 significance: Significance = Significance()) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv, significance.csv and plots/ndcg_at_10.png under ``output_dir``."""
    output_dir = Path(output_dir)
    results = load_results(output_dir)
    if not results:
        raise UserError(f"no results under {output_dir / 'runs'}; run 'searchr3-eval run' first")
    computed = tables(results, baseline, significance)
    return [
        atomic_write_text(output_dir / "leaderboard.md", markdown(results, baseline, significance, computed)),
        atomic_write_text(output_dir / "leaderboard.csv", csv_text(computed[MAIN_METRIC])),
        atomic_write_text(output_dir / "significance.csv", significance_csv(computed)),
        plot_scores(computed[MAIN_METRIC], output_dir / "plots" / f"{MAIN_METRIC}.png"),
    ]
