"""The report page's figures, drawn with matplotlib and returned as PNG bytes: score against synthetic volume
(the paper's Figure 2), precision against similarity per answer (Figure 3), and the cumulative cost curves with
their break-even (Figure 4). Each carries its title in its pixels; the page repeats it as text."""

from __future__ import annotations

import io

from llamaduo.reporting.gate import JUDGE_METRICS
from llamaduo.reporting.page_data import Series


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written by stages and by the loop in a terminal
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def volume(series: Series, title: str) -> bytes:
    """One panel per judge metric, a line per judge, with the bootstrap 95% interval where a cycle recorded it."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(JUDGE_METRICS), figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, JUDGE_METRICS):
        for (judge, m), pts in sorted(series.items()):
            if m != metric:
                continue
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=judge)
            ci = [p for p in pts if p[2] is not None]
            if ci:  # the bootstrap 95% interval of the mean, where the cycle recorded it (bars: one cycle has one)
                ax.errorbar([p[0] for p in ci], [p[1] for p in ci], yerr=[[p[1] - p[2] for p in ci], [p[3] - p[1] for p in ci]],
                            fmt="none", ecolor=line.get_color(), capsize=4)
        ax.set_title(f"{metric} (mean, 95% interval)")
        ax.set_xlabel("synthetic volume (rows requested)")
        positive = sorted({p[0] for pts in series.values() for p in pts if p[0] > 0})
        if positive and positive[-1] >= 8 * positive[0]:
            # the loop doubles the volume (1k ... 256k): on a linear axis every early cycle sits at 0; symlog also
            # keeps cycle 0's volume 0, which a log axis cannot show
            ax.set_xscale("symlog", linthresh=positive[0])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(title="judge", fontsize=8)
    axes[0].set_ylabel("judge score (0-100)")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def scores(points: list[dict], title: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter([p["similarity"] for p in points], [p["precision"] for p in points], alpha=0.6, s=18)
    ax.set_xlabel("similarity (mean of M judgments)")
    ax.set_ylabel("precision (mean of M judgments)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def cost(rep: dict, title: str) -> bytes:
    """`rep` is metrics/cost.json (`cycle.cost.report` with the service's name)."""
    plt = _plt()
    months = [c["month"] for c in rep["curve"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(months, [c["service_usd"] for c in rep["curve"]], label=f"service LLM ({rep.get('service', 'service')})")
    ax.plot(months, [c["local_usd"] for c in rep["curve"]], label="local model (incl. migration)")
    if rep.get("break_even_month"):
        ax.axvline(rep["break_even_month"], ls="--", c="grey", label=f"break-even: month {rep['break_even_month']}")
    ax.set_xlabel("month")
    ax.set_ylabel("cumulative cost (USD)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)
