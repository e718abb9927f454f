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

    def keep_steps_up_to(self, step: int) -> None:
        """Drop the rows after ``step`` (written after the checkpoint a resumed run continues from)."""
        rows = [r for r in self.rows() if int(r["step"]) <= step]

        def write(tmp) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)

    def rows(self) -> list[dict]:
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


def plot_log(log: CSVLog, path: Path, x: str = "step") -> Path:
    """Losses and rewards in the top panel; throughput, timing and count columns (their scale differs) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = log.rows()
    columns = [c for c in log.columns if c != x and rows and rows[0].get(c) not in ("", None)]
    lower = [c for c in columns if "second" in c or c.endswith("_docs")]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for ax, group in ((axes[0], [c for c in columns if c not in lower]), (axes[1], lower)):
        for column in group:
            ax.plot([float(r[x]) for r in rows], [float(r[column]) for r in rows], label=column)
        if group:
            ax.legend(fontsize=8)
    axes[1].set_xlabel(x)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
