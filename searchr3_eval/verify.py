"""Re-run the reproducible conditions (``conditions.yaml``) and report which expected scores still hold."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from searchr3_eval.errors import UserError
from searchr3_eval.metrics import MEASURES
from searchr3_eval.models import ModelOptions
from searchr3_eval.runner import evaluate

CONDITIONS = Path(__file__).resolve().parent / "conditions.yaml"
CONDITION_KEYS = {"name", "model", "rows"}, {"options"}  # (required, optional)
ROW_KEYS = {"task", "scores", "tolerance", "source"}, {"fast"}
OPTION_NAMES = {f.name for f in fields(ModelOptions)} - {"show_progress", "memmap_dir"}


@dataclass
class Condition:
    """A model spec with its encoder options: what one leaderboard row is."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def model_options(self, show_progress: bool = True) -> ModelOptions:
        return ModelOptions(**self.options, show_progress=show_progress)


@dataclass
class Check:
    condition: Condition
    task: str
    metric: str
    expected: float
    tolerance: float
    source: str
    fast: bool = False
    measured: float | None = None

    @property
    def passed(self) -> bool:
        return self.measured is not None and abs(self.measured - self.expected) <= self.tolerance


def _keys(mapping: Any, keys: tuple[set[str], set[str]], where: str) -> dict:
    required, optional = keys
    if not isinstance(mapping, dict) or not required <= set(mapping) <= required | optional:
        raise UserError(f"{where}: needs the keys {', '.join(sorted(required))}"
                        + (f" (optional: {', '.join(sorted(optional))})" if optional else ""))
    return mapping


def load_conditions(path: Path | None = None) -> list[Check]:
    """Every (condition, task, metric) check of a conditions file; a malformed file names the file and the row."""
    path = Path(path or CONDITIONS)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed YAML in {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("conditions"), list):
        raise UserError(f"{path}: expected a mapping with a list of conditions")
    checks, names = [], set()
    for number, raw in enumerate(data["conditions"], 1):
        where = f"{path} condition {number}"
        raw = _keys(raw, CONDITION_KEYS, where)
        options = raw.get("options") or {}
        if not isinstance(options, dict) or not set(options) <= OPTION_NAMES:
            unknown = sorted(set(options) - OPTION_NAMES) if isinstance(options, dict) else options
            raise UserError(f"{where}: unknown options {unknown}; use ModelOptions fields")
        condition = Condition(str(raw["name"]), str(raw["model"]), options)
        if condition.name in names:
            raise UserError(f"{where}: a second condition named {condition.name!r}")
        names.add(condition.name)
        try:
            condition.model_options().validate()
        except (TypeError, UserError) as exc:
            raise UserError(f"{where}: {exc}") from exc
        if not isinstance(raw["rows"], list):
            raise UserError(f"{where}: rows must be a list")
        for row_number, row in enumerate(raw["rows"], 1):
            row_where = f"{where} row {row_number}"
            row = _keys(row, ROW_KEYS, row_where)
            if not isinstance(row["scores"], dict) or not row["scores"]:
                raise UserError(f"{row_where}: scores must map metric names to values")
            for metric, value in row["scores"].items():
                if metric not in MEASURES:
                    raise UserError(f"{row_where}: unknown metric {metric!r}")
                try:
                    checks.append(Check(condition, str(row["task"]), metric, float(value), float(row["tolerance"]),
                                        str(row["source"]), bool(row.get("fast", False))))
                except (TypeError, ValueError) as exc:
                    raise UserError(f"{row_where}: {exc}") from exc
    return checks


def verify(data_dir: Path, conditions: Path | None = None, *, names: str | None = None, tasks: str | None = None,
           fast: bool = False, output_dir: Path = Path("results/verify"), cache_dir: Path | None = None,
           show_progress: bool = True) -> list[Check]:
    """Re-score every selected check from scratch (``--overwrite``) and fill in ``measured``; ``names`` selects
    conditions by name or model spec, ``fast`` only the rows CI runs."""
    checks = load_conditions(conditions)
    wanted = {m.strip() for m in names.split(",")} if names else None
    wanted_tasks = {t.strip() for t in tasks.split(",")} if tasks else None
    checks = [c for c in checks if (not wanted or wanted & {c.condition.name, c.condition.model})
              and (not wanted_tasks or c.task in wanted_tasks) and (c.fast or not fast)]
    if not checks:
        raise UserError("no condition matches --conditions/--tasks" + (" among the fast rows" if fast else ""))
    by_condition: dict[str, list[Check]] = {}
    for check in checks:
        by_condition.setdefault(check.condition.name, []).append(check)
    for rows in by_condition.values():
        condition = rows[0].condition
        summary = evaluate(condition.model, sorted({c.task for c in rows}), output_dir, data_dir=data_dir,
                           overwrite=True, download=False, cache_dir=cache_dir, report=False, echo=lambda _: None,
                           options=condition.model_options(show_progress))
        scores = {r.task: r.scores for r in summary.computed}
        for check in rows:
            check.measured = scores[check.task][check.metric]
    return checks


def format_matrix(checks: list[Check]) -> str:
    """Conditions by tasks, each cell 'measured ok' or 'measured FAIL (expected x ± t)', then 'N passed, N failed'."""
    tasks = sorted({c.task for c in checks})
    cell = {(c.condition.name, c.metric, c.task): c for c in checks}
    lines = ["| condition | model | metric | " + " | ".join(tasks) + " |", "|---|---|---|" + "---|" * len(tasks)]
    for name, metric in dict.fromkeys((c.condition.name, c.metric) for c in checks):
        model = next(c.condition.model for c in checks if c.condition.name == name)
        cells = []
        for task in tasks:
            c = cell.get((name, metric, task))
            if c is None:
                cells.append("")
            elif c.passed:
                cells.append(f"{c.measured:.5f} ok")
            else:
                measured = "not run" if c.measured is None else f"{c.measured:.5f}"
                cells.append(f"{measured} FAIL (expected {c.expected} ± {c.tolerance})")
        lines.append(f"| {name} | {model} | {metric} | " + " | ".join(cells) + " |")
    passed = sum(c.passed for c in checks)
    lines.append(f"{passed} passed, {len(checks) - passed} failed")
    return "\n".join(lines)
