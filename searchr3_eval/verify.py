"""Re-run pinned expected scores (``expected_scores.yaml``) and report which still hold."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from searchr3_eval.errors import UserError
from searchr3_eval.metrics import MEASURES
from searchr3_eval.models import ModelOptions

EXPECTED_SCORES = Path(__file__).resolve().parent / "expected_scores.yaml"
FIELDS = {"task": str, "model": str, "metric": str, "value": float, "tolerance": float, "source": str}


@dataclass
class Check:
    task: str
    model: str
    metric: str
    expected: float
    tolerance: float
    source: str
    measured: float | None = None

    @property
    def passed(self) -> bool:
        return self.measured is not None and abs(self.measured - self.expected) <= self.tolerance


def load_expected(path: Path | None = None) -> list[Check]:
    path = Path(path or EXPECTED_SCORES)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        rows = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed YAML in {path}: {exc}") from exc
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a list of rows")
    checks = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or set(row) != set(FIELDS):
            raise UserError(f"{path} row {number}: needs exactly the keys {', '.join(FIELDS)}")
        try:
            values = {key: kind(row[key]) for key, kind in FIELDS.items()}
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path} row {number}: {exc}") from exc
        if values["metric"] not in MEASURES:
            raise UserError(f"{path} row {number}: unknown metric {values['metric']!r}")
        checks.append(Check(values["task"], values["model"], values["metric"], values["value"], values["tolerance"],
                            values["source"]))
    return checks


def verify(data_dir: Path, expected: Path | None = None, *, models: str | None = None, tasks: str | None = None,
           output_dir: Path = Path("results/verify"), cache_dir: Path | None = None,
           show_progress: bool = True) -> list[Check]:
    """Re-score every selected row from scratch (``--overwrite``) and fill in ``measured``."""
    from searchr3_eval.runner import evaluate

    checks = load_expected(expected)
    wanted_models = {m.strip() for m in models.split(",")} if models else None
    wanted_tasks = {t.strip() for t in tasks.split(",")} if tasks else None
    checks = [c for c in checks if (not wanted_models or c.model in wanted_models) and (not wanted_tasks or c.task in wanted_tasks)]
    if not checks:
        raise UserError("no expected score matches --models/--tasks")
    by_model: dict[str, list[Check]] = defaultdict(list)
    for check in checks:
        by_model[check.model].append(check)
    for model, rows in by_model.items():
        summary = evaluate(model, sorted({c.task for c in rows}), output_dir, data_dir=data_dir, overwrite=True,
                           download=False, cache_dir=cache_dir, report=False, echo=lambda _: None,
                           options=ModelOptions(show_progress=show_progress))
        scores = {r.task: r.scores for r in summary.computed}
        for check in rows:
            check.measured = scores[check.task][check.metric]
    return checks


def format_matrix(checks: list[Check]) -> str:
    """Models by tasks, each cell 'measured ok' or 'measured FAIL (expected x ± t)', then 'N passed, N failed'."""
    tasks = sorted({c.task for c in checks})
    models = list(dict.fromkeys(c.model for c in checks))
    cell = {(c.model, c.task): c for c in checks}
    lines = ["| model | metric | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for model in models:
        metrics = sorted({c.metric for c in checks if c.model == model})
        for metric in metrics:
            cells = []
            for task in tasks:
                c = cell.get((model, task))
                if c is None or c.metric != metric:
                    cells.append("")
                elif c.passed:
                    cells.append(f"{c.measured:.5f} ok")
                else:
                    cells.append(f"{c.measured:.5f} FAIL (expected {c.expected} ± {c.tolerance})")
            lines.append(f"| {model} | {metric} | " + " | ".join(cells) + " |")
    passed = sum(c.passed for c in checks)
    lines.append(f"{passed} passed, {len(checks) - passed} failed")
    return "\n".join(lines)
