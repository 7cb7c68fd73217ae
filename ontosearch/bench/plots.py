"""PNG plots of a run: single-query latency distribution and throughput against concurrency.

One panel per dataset, one line per path, so the proxy's cost is the gap between two lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"proxy": "tab:red", "direct": "tab:blue", "in-process": "tab:green", "exact": "tab:gray"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_plot(datasets: list[dict[str, Any]], path: str | Path, concurrency: int = 1) -> Path:
    """Empirical CDF of single-query latency at `concurrency` clients, log-scaled milliseconds."""
    plt = _pyplot()
    n = max(1, len(datasets))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.0), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=False):
        for name, by_concurrency in dataset.get("_latencies", {}).items():
            values = np.sort(np.asarray(by_concurrency.get(concurrency, []), dtype=float))
            if values.size == 0:
                continue
            ranks = np.arange(1, values.size + 1) / values.size
            p50, p99 = np.percentile(values, [50, 99])
            ax.plot(values, ranks, color=COLORS.get(name), label=f"{name} (p50 {p50:.1f}, p99 {p99:.1f} ms)")
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on narrow ranges
        ax.axhline(0.99, color="black", linewidth=0.5, linestyle=":")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of queries")
        ax.set_title(f"{dataset['dataset']}\n{concurrency} client(s), top-10", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def throughput_plot(datasets: list[dict[str, Any]], path: str | Path) -> Path:
    """Queries per second against concurrent clients, one line per path."""
    plt = _pyplot()
    n = max(1, len(datasets))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.0), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=False):
        paths = sorted({run["path"] for run in dataset["runs"]})
        for name in paths:
            runs = sorted((r for r in dataset["runs"] if r["path"] == name), key=lambda r: r["concurrency"])
            ax.plot(
                [r["concurrency"] for r in runs],
                [r["qps"] for r in runs],
                marker="o",
                color=COLORS.get(name),
                label=name,
            )
        concurrencies = sorted({run["concurrency"] for run in dataset["runs"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies)
        ax.set_xticklabels([str(c) for c in concurrencies])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("queries per second")
        ax.set_ylim(bottom=0)
        ax.set_title(dataset["dataset"], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
