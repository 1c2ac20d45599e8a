"""The sweep report's figures: a scaling curve per metric, seeds' means with their t interval, references as
horizontal lines."""

from __future__ import annotations

import io
import re
import statistics

# matplotlib is imported at the top: this module is reached only when a sweep report is written
# (ftscale.sweep imports the report inside write_report), never when the CLI starts
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import CONFIDENCE, t_interval
from ftscale.eval.sweep_rows import by_size, values


def png_name(metric: str) -> str:
    """The file name of a metric's scaling figure."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", metric).strip("_") or "metric"
    return f"scaling-{slug}.png"


def scaling_png(curves: dict[tuple, list[ResultRow]], refs: dict[tuple, list[ResultRow]], metric: str, higher: bool,
                label) -> bytes:
    """Mean over seeds per size with a shaded 95% t interval, references as dashed horizontal lines."""
    fig = Figure(figsize=(9.0, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sizes = sorted({r.num_train_examples for rows in curves.values() for r in rows})
    positive = [s for s in sizes if s > 0]
    all_vals = []
    for i, (key, rows) in enumerate(curves.items()):
        color = f"C{i % 10}"
        xs, means, los, his = [], [], [], []
        for size, grp in by_size(rows).items():
            vals = values(grp, metric)
            if not vals:
                continue
            mean, lo, hi = t_interval(vals)
            xs.append(size)
            means.append(mean)
            los.append(mean if lo is None else lo)
            his.append(mean if hi is None else hi)
            all_vals += vals
            if len(vals) < len(grp):  # fewer seeds finished than planned: say so on the point
                ax.annotate(f"n={len(vals)}/{len(grp)}", (size, mean), fontsize=7, color=color, ha="right",
                            xytext=(-5, -11 - 8 * (i % 4)), textcoords="offset points")
        if not xs:
            continue
        ax.plot(xs, means, marker="o", color=color, label=label(key))
        if any(lo != hi for lo, hi in zip(los, his)):
            ax.fill_between(xs, los, his, color=color, alpha=0.13, linewidth=0)
    all_vals += _reference_lines(ax, refs, metric, label, len(curves))
    _axes(ax, sizes, positive, all_vals, metric, higher)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _reference_lines(ax, refs: dict[tuple, list[ResultRow]], metric: str, label, n_curves: int) -> list[float]:
    """Draw each reference's mean as a horizontal line; return the values drawn from."""
    styles = ["--", "-.", ":", (0, (5, 2, 1, 2))]
    drawn = []
    for j, (key, rows) in enumerate(refs.items()):
        vals = values(rows, metric)
        if not vals:
            continue
        drawn += vals
        ax.axhline(statistics.fmean(vals), linestyle=styles[j % len(styles)], color=f"C{(n_curves + j) % 10}",
                   linewidth=1.4, label=f"reference: {label(key)} (n={len(vals)})")
    return drawn


def _axes(ax, sizes: list, positive: list, all_vals: list[float], metric: str, higher: bool) -> None:
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))  # keeps 0 (the untrained base) on a log-like axis
    if sizes:
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
    if all_vals and 0 <= min(all_vals) and max(all_vals) <= 1:
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training examples (0 = untrained base; symlog scale)")
    ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(f"{metric}: mean over seeds, shaded {int(CONFIDENCE * 100)}% t interval")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
