"""Draws `docs/_static/benchmark.svg` from the results table in `docs/performance.md`.

Run from the repository root after updating the table: `python docs/figures.py`. The figure
shows each optimizer's median step time as a multiple of `optax.adam`'s, on the three trees.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parent
TREES = ("one tensor (32M)", "transformer (147 tensors)", "2000 small tensors")


def results(page: Path) -> list[tuple[str, list[float]]]:
    """(optimizer, [ratio to optax.adam on each tree]) for each row of the results table."""
    rows = []
    for line in page.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("optimizer", "---"):
            continue
        ratios = [re.search(r"\(([\d.]+)\)", cell) for cell in cells[1:4]]
        if all(ratios):
            rows.append((cells[0].replace("`", ""), [float(m.group(1)) for m in ratios if m]))
    return rows


def draw(rows: list[tuple[str, list[float]]], out: Path) -> None:
    plt.rcParams.update({"svg.hashsalt": "adamx", "svg.fonttype": "none", "font.size": 9})
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.6))
    height = 0.26
    for k, tree in enumerate(TREES):
        ys = [i + (k - 1) * height for i in range(len(rows))]
        ax.barh(ys, [ratios[k] for _, ratios in rows], height, label=tree)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8]
    ax.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    ax.set_xlabel("median step time / optax.adam's (log scale; lower is faster)")
    ax.set_title("One jitted, donated update step on a 2-core CPU")
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.1), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DOCS / "_static" / "benchmark.svg"
    rows = results(DOCS / "performance.md")
    if len(rows) < 10:
        raise SystemExit(f"expected the results table in performance.md, found {len(rows)} rows")
    draw(rows, out)
    print(f"wrote {out}: {len(rows)} optimizers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
