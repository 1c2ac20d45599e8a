"""The sweep report's rows: their order and groups, which of them a mean is over, and the view of a sweep
that every section of the report reads.

A row is one (cell, prompt variant, temperature) of a sweep. Only a row with status 'done' has values; a
mean is over those, and what kept the others out (failed, missing, running, not scorable) is counted next to it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ftscale.eval.report_document import TableCell, fmt
from ftscale.eval.result_row import ResultRow, probe_metrics
from ftscale.eval.stats import t_interval
from ftscale.eval.tasks import Task

NOT_DONE = ("failed", "missing", "running")


def sort_key(v):
    """A total order over mixed values (None last)."""
    if isinstance(v, tuple):
        return tuple(sort_key(x) for x in v)
    if v is None:
        return (2, 0, "")
    if isinstance(v, (int, float)):
        return (0, v, "")
    return (1, 0, str(v))


def is_done(r: ResultRow) -> bool:
    return r.status == "done"


def values(rows: list[ResultRow], metric: str) -> list[float]:
    """The finished rows' values of a metric (or probe metric), None left out."""
    return numbers(rows, lambda r: r.metric(metric))


def numbers(rows: list[ResultRow], of) -> list[float]:
    """The finished rows' values of of(row) (a number the row carries: tokens, a cost), None left out."""
    return [float(v) for r in rows if is_done(r) and (v := of(r)) is not None]


def curve_key(r: ResultRow) -> tuple:
    return (r.system, r.prompt_variant, r.temperature)


def group(rows: list[ResultRow], key) -> dict[tuple, list[ResultRow]]:
    """The rows by key(row), the keys in sort_key order."""
    out: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def by_size(rows: list[ResultRow]) -> dict:
    return group(rows, lambda r: r.num_train_examples)


def problems(rows: list[ResultRow], metric: str | None = None) -> Counter:
    """What keeps rows out of a mean: their status, or 'not scorable' for done rows without the metric."""
    c = Counter(r.status for r in rows if not is_done(r))
    if metric is not None:
        c.update("not scorable" for r in rows if is_done(r) and r.metric(metric) is None)
    return c


def problem_text(c: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def mark(c: Counter) -> str:
    """The CSS mark of a table cell that has these problems: the first of failed, missing, running; else flag."""
    return next((s for s in NOT_DONE if s in c), "flag")


def nothing_cell(probs: Counter) -> TableCell:
    """A cell none of whose rows has a value: 'failed' (or the status; with the count when several)."""
    if not probs:
        return TableCell("–")
    if len(probs) == 1:
        status, n = next(iter(probs.items()))
        return TableCell(status if n == 1 else f"{status} ({n})", mark(probs))
    return TableCell(problem_text(probs), mark(probs))


def mean_cell(rows: list[ResultRow], metric: str, interval: bool = False) -> TableCell:
    """A mean over the seeds that finished, with n and what is missing; 'failed'/'missing' when none did."""
    vals = values(rows, metric)
    probs = problems(rows, metric)
    if not vals:
        return nothing_cell(probs)
    mean, lo, hi = t_interval(vals)
    text = f"{mean:.3f}"
    if interval and lo is not None:
        text += f" [{lo:.3f}, {hi:.3f}]"
    text += f" (n={len(vals)}" + (f"; {problem_text(probs)})" if probs else ")")
    return TableCell(text, "partial" if probs else None)


@dataclass
class SweepView:
    """A sweep's rows as the report reads them: the metrics in order, the curves (fine-tuned systems) and the
    reference lines, each keyed by (system, prompt variant, temperature)."""

    rows: list[ResultRow]
    task: Task
    sweep_dir: str
    probes: list[str]
    directions: dict[str, bool]  # metric -> higher is better
    metric_order: list[str]
    headline: list[str]
    temps: list
    default_variant: str
    curves: dict[tuple, list[ResultRow]]
    refs: dict[tuple, list[ResultRow]]

    @property
    def many_t(self) -> bool:
        return len(self.temps) > 1

    @property
    def title(self) -> str:
        return f"Sweep report: {Path(self.sweep_dir).name or 'sweep'}"

    @property
    def curve_sizes(self) -> list:
        """The training sizes of the curves, in order."""
        return sorted({r.num_train_examples for rs in self.curves.values() for r in rs}, key=sort_key)

    def label(self, key: tuple) -> str:
        system, variant, t = key
        return f"{system}, prompt {variant}" + (f", T={fmt(t, 'g')}" if self.many_t else "")


def sweep_view(rows: list[ResultRow], task: Task, sweep_dir: str) -> SweepView:
    """The view of a sweep's rows."""
    rows = list(rows)
    # the general-ability probes (eval.probes) count as headline metrics: forgetting is read beside the task
    probes = probe_metrics(rows)
    variants = task.prompt_variants
    return SweepView(
        rows=rows, task=task, sweep_dir=sweep_dir, probes=probes,
        directions={m.name: m.higher_is_better for m in task.metrics} | {p: True for p in probes},
        metric_order=list(task.headline) + [m.name for m in task.metrics if m.name not in task.headline] + probes,
        headline=(list(task.headline) or [m.name for m in task.metrics][:1]) + probes,
        temps=sorted({r.temperature for r in rows}, key=sort_key),
        default_variant="default" if "default" in variants else (variants or ("default",))[0],
        curves=group([r for r in rows if not r.is_reference], curve_key),
        refs=group([r for r in rows if r.is_reference], curve_key))
