# mypy: ignore-errors
"""Draw ``latest.png`` from a benchmark report (needs matplotlib; used by run.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLOURS = {
    "kiwi_anyio/asyncio": "#1f77b4",
    "kiwi_anyio/uvloop": "#6baed6",
    "kiwi_anyio/trio": "#9467bd",
    "kiwi_anyio/asyncio+json": "#2ca02c",
    "kiwi_anyio/trio+json": "#98df8a",
    "kiwiPy/thread": "#d62728",
    "kiwiPy/asyncio": "#ff9896",
    "aio-pika": "#2ca02c",
    "aiormq": "#98df8a",
    "pika": "#ff7f0e",
}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from run import SUBJECT, WORKLOADS

    panels = []
    for w in WORKLOADS:
        entries = report["results"].get(w.name)
        if not entries:
            continue
        if w.name == "memory":
            runs = [r for e in entries.values() for r in e["runs"] if "rss_samples" in r]
            if runs:
                panels.append((w, None, runs[0]["rss_samples"]))
            continue
        for m in w.metrics[:2]:
            bars = []
            for client, entry in entries.items():
                if "median" in entry and m.key in entry["median"]:
                    bars.append(
                        (
                            client,
                            entry["median"][m.key],
                            entry["min"][m.key],
                            entry["max"][m.key],
                        )
                    )
            if bars:
                panels.append((w, m, bars))
    if not panels:
        return
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 3.4), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (w, m, bars) in zip(axes.flat, panels, strict=False):
        if m is None:  # memory: RSS over messages
            ax.plot([s[0] for s in bars], [s[1] for s in bars], marker=".", color=COLOURS[SUBJECT])
            ax.set_xlabel("task round trips", fontsize=7)
            ax.set_ylabel("RSS MiB", fontsize=7)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{w.name}: kiwi_anyio/asyncio RSS", fontsize=8)
            ax.tick_params(labelsize=7)
            continue
        names = [b[0] for b in bars]
        values = [b[1] for b in bars]
        errors = [[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]]
        ax.bar(
            range(len(bars)),
            values,
            yerr=errors,
            capsize=3,
            color=[COLOURS.get(n, "grey") for n in names],
        )
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        better = "higher" if m.higher_is_better else "lower"
        ax.set_title(f"{w.name}: {m.label}\n({better} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    meta = report["meta"]
    fig.suptitle(
        f"kiwi_anyio benchmarks · {meta['date']} · {meta['mode']} · median of {meta['repeat']}, "
        "bars min-max",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
