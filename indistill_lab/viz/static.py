"""Static figures (matplotlib PNGs) that drivers write beside their tables: no notebook stack needed, so
`reproduce` runs where the `lab` extra (plotly, ipywidgets) is not installed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def results_png(summary: Sequence[Mapping[str, Any]], path: Path | str, title: str = "") -> None:
    """Grouped bars of mAP (e) and mAP (c) per method with std error bars (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["method"] for s in summary]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.38
    for i, (label, key) in enumerate((("euclidean", "map_e"), ("cosine", "map_c"))):
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        means = [s[key][0] for s in summary]
        ax.bar(xs, means, width, yerr=[s[key][1] for s in summary], capsize=3, label=f"mAP ({label})")
    low = min(min(s["map_e"][0], s["map_c"][0]) for s in summary)
    high = max(max(s["map_e"][0], s["map_c"][0]) for s in summary)
    ax.set_ylim(max(0.0, low - 5), min(100.0, high + 6))
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
