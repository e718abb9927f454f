"""Loss logs as CSV and their plot."""
from __future__ import annotations

import csv
from pathlib import Path

from searchr3_eval.atomic import atomic_write


class CSVLog:
    """Appends one row per step to ``path`` (kept across resumes)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(",".join(columns) + "\n")

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([row.get(c, "") for c in self.columns])

    def rows(self) -> list[dict]:
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


def plot_log(log: CSVLog, path: Path, x: str = "step") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = log.rows()
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in log.columns:
        if column != x and rows and rows[0].get(column) not in ("", None):
            ax.plot([float(r[x]) for r in rows], [float(r[column]) for r in rows], label=column)
    ax.set_xlabel(x)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
