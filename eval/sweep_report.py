"""The sweep report: every backend of a sweep in one comparison, as self-contained HTML and as Markdown.

A sweep is a grid of cells (systems x training sizes x seeds), each evaluated with one or more prompt
variants at one or more temperatures; one row per (cell, prompt variant, temperature). The report
shows scaling curves with seed confidence intervals, how much data a fine-tune needs to beat each
reference (a paired comparison on the same eval items, with its interval), latency, cost, seed spread and convergence, the effect of
temperature, and which run directories every figure and table was made from.

Rows that did not finish (failed, missing, running) are listed and marked in every table; a mean is
over the seeds that finished, with n shown, never over a silently shortened list.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ftscale.atomic import atomic_path, write_text
from ftscale.eval.report import probe_metrics, usd
from ftscale.eval.stats import (ALPHA, CONFIDENCE, align, beats, holm, p_text, paired_difference, per_example,
                                t_interval)
from ftscale.eval.tasks import Task

NOT_DONE = ("failed", "missing", "running")

# --------------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------------

FINAL_WINDOW = 3
DROP_FACTOR = 0.9
MAD_K = 3.0
MAD_FLOOR = 0.05
MIN_SEEDS_FOR_OUTLIER = 3

CONVERGENCE_RULE = (
    f"A trained cell did not converge if (a) its final loss (the mean of its last {FINAL_WINDOW} logged values, "
    f"of all of them when fewer are logged) is not below {DROP_FACTOR} x its first logged loss, or (b) when its "
    f"(system, training size) has >= {MIN_SEEDS_FOR_OUTLIER} seeds with a loss curve, its final loss is above the "
    f"median final loss of the other seeds by more than {MAD_K:g} x their median absolute deviation (MAD, not "
    f"rescaled, floored at {MAD_FLOOR}). A loss curve with a non-finite value did not converge.")


def final_loss(loss: list[float]) -> float:
    tail = list(loss[-FINAL_WINDOW:])
    return sum(tail) / len(tail)


def convergence_verdict(loss: list[float], other_finals: list[float]) -> list[str]:
    """Why a cell did not converge (empty list: it converged), by CONVERGENCE_RULE. `other_finals` are the
    final losses of the other seeds of the same (system, training size)."""
    if not loss:
        raise ValueError("empty loss curve")
    if not all(math.isfinite(v) for v in loss):
        return ["the loss curve has a non-finite value"]
    reasons = []
    first, final = loss[0], final_loss(loss)
    if not final < DROP_FACTOR * first:
        reasons.append(f"final loss {final:.3f} is not below {DROP_FACTOR} x first loss {first:.3f}")
    others = [v for v in other_finals if math.isfinite(v)]
    if len(others) + 1 >= MIN_SEEDS_FOR_OUTLIER:
        med = statistics.median(others)
        mad = max(statistics.median(abs(v - med) for v in others), MAD_FLOOR)
        if final > med + MAD_K * mad:
            reasons.append(f"final loss {final:.3f} is above the other seeds' median {med:.3f} by more than "
                           f"{MAD_K:g} x MAD {mad:.3f}")
    return reasons


def convergence_table(rows: list[dict]) -> list[dict]:
    """One entry per trained cell (system, size, seed) with a loss curve: first/final loss and the verdict."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        if r.get("reference") or not r.get("loss"):
            continue
        key = (r["system"], r.get("num_train_examples"), r.get("seed"))
        cells.setdefault(key, r)  # one training run, evaluated at several prompts and temperatures
    finals = {k: final_loss(r["loss"]) if all(math.isfinite(v) for v in r["loss"]) else math.nan
              for k, r in cells.items()}
    out = []
    for key, r in sorted(cells.items(), key=lambda kv: _sort_key(kv[0])):
        others = [finals[k] for k in cells if k[:2] == key[:2] and k != key]
        reasons = convergence_verdict(list(r["loss"]), others)
        out.append({"system": key[0], "num_train_examples": key[1], "seed": key[2], "first": r["loss"][0],
                    "final": finals[key], "n_logged": len(r["loss"]), "n_other_seeds": len(others),
                    "converged": not reasons, "reasons": reasons, "run_dir": r.get("run_dir")})
    return out


# --------------------------------------------------------------------------------------------------
# Grouping helpers
# --------------------------------------------------------------------------------------------------


def _sort_key(v):
    """A total order over mixed values (None last)."""
    if isinstance(v, tuple):
        return tuple(_sort_key(x) for x in v)
    if v is None:
        return (2, 0, "")
    if isinstance(v, (int, float)):
        return (0, v, "")
    return (1, 0, str(v))


def _done(r: dict) -> bool:
    return r.get("status") == "done"


def _values(rows: list[dict], key: str) -> list[float]:
    """The finished rows' values of `key` (metric or other numeric field), None left out."""
    return [float(r[key]) for r in rows if _done(r) and r.get(key) is not None]


def _curve_key(r: dict) -> tuple:
    return (r["system"], r.get("prompt_variant"), r.get("temperature"))


def _group(rows: list[dict], key) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[0])))


def _fmt_t(t) -> str:
    return "–" if t is None else f"{t:g}"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _problems(rows: list[dict], metric: str | None = None) -> Counter:
    """What keeps rows out of a mean: their status, or 'not scorable' for done rows without the metric."""
    c = Counter(r.get("status") or "unknown" for r in rows if not _done(r))
    if metric is not None:
        c.update("not scorable" for r in rows if _done(r) and r.get(metric) is None)
    return c


def _problem_text(c: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def _mark(c: Counter) -> str:
    """The CSS mark of a table cell that has these problems: the first of failed, missing, running; else flag."""
    return next((s for s in NOT_DONE if s in c), "flag")


# --------------------------------------------------------------------------------------------------
# The document: blocks rendered both as HTML and as Markdown
# --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    mark: str | None = None  # CSS class: failed, missing, running, partial, flag


@dataclass
class Block:
    kind: str  # h1 h2 h3 p code table img ul
    text: str = ""
    head: list | None = None
    rows: list | None = None
    items: list | None = None
    name: str = ""  # image file name
    png: bytes = b""
    anchor: str = ""


def _nothing_cell(probs: Counter) -> Cell:
    """A cell none of whose rows has a value: 'failed' (or the status; with the count when several)."""
    if not probs:
        return Cell("–")
    if len(probs) == 1:
        status, n = next(iter(probs.items()))
        return Cell(status if n == 1 else f"{status} ({n})", _mark(probs))
    return Cell(_problem_text(probs), _mark(probs))


def _agg_cell(group: list[dict], metric: str, interval: bool = False) -> Cell:
    """A mean over the seeds that finished, with n and what is missing; 'failed'/'missing' when none did."""
    vals = _values(group, metric)
    probs = _problems(group, metric)
    if not vals:
        return _nothing_cell(probs)
    mean, lo, hi = t_interval(vals)
    text = f"{mean:.3f}"
    if interval and lo is not None:
        text += f" [{lo:.3f}, {hi:.3f}]"
    text += f" (n={len(vals)}" + (f"; {_problem_text(probs)})" if probs else ")")
    return Cell(text, "partial" if probs else None)


class Doc:
    def __init__(self):
        self.blocks: list[Block] = []
        self.sources: list[tuple[str, list[dict]]] = []

    def h1(self, t):
        self.blocks.append(Block("h1", t))

    def h2(self, t, anchor):
        self.blocks.append(Block("h2", t, anchor=anchor))

    def h3(self, t):
        self.blocks.append(Block("h3", t))

    def p(self, t):
        self.blocks.append(Block("p", t))

    def code(self, t):
        self.blocks.append(Block("code", t))

    def ul(self, items):
        self.blocks.append(Block("ul", items=list(items)))

    def table(self, head, rows, source_name: str | None = None, source_rows: list[dict] | None = None):
        self.blocks.append(Block("table", head=list(head), rows=[list(r) for r in rows]))
        if source_name:
            self.sources.append((source_name, source_rows or []))

    def img(self, name, alt, png, source_rows):
        self.blocks.append(Block("img", alt, name=name, png=png))
        self.sources.append((f"figure {name}", source_rows))


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _html_inline(text: str) -> str:
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(str(text), quote=True))


def _md_inline(text: str) -> str:
    # keep raw HTML out of the Markdown (outside code spans), so a viewer shows the text as text
    parts = re.split(r"(`[^`]+`)", str(text))
    return "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else p.replace("<", "&lt;") for p in parts)


def _md_cell(c) -> str:
    text = c.text if isinstance(c, Cell) else str(c)
    return _md_inline(text).replace("|", "\\|").replace("\n", " ")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f0f0f0}
td.failed{background:#fbd5d5;font-weight:600}td.missing{background:#fde9c8;font-weight:600}
td.running{background:#dbe8fb}td.partial{background:#fff8d6}td.flag{background:#fbd5d5}
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;white-space:pre-wrap}code{background:#f3f3f3;padding:0 .2em}
img{max-width:100%;height:auto;border:1px solid #ddd}
"""


def render_html(doc: Doc, title: str, images: dict[str, bytes]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<link rel="icon" href="data:,">',  # no favicon request: the page makes no request at all
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head><body>"]
    for b in doc.blocks:
        if b.kind == "h1":
            out.append(f"<h1>{_html_inline(b.text)}</h1>")
        elif b.kind == "h2":
            out.append(f'<h2 id="{html.escape(b.anchor)}">{_html_inline(b.text)}</h2>')
        elif b.kind == "h3":
            out.append(f"<h3>{_html_inline(b.text)}</h3>")
        elif b.kind == "p":
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif b.kind == "code":
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "img":
            data = base64.b64encode(images[b.name]).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}">'
                       f"<figcaption>{_html_inline(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{_html_inline(h)}</th>" for h in b.head)
                       + "</tr></thead><tbody>")
            for row in b.rows:
                tds = []
                for c in row:
                    c = c if isinstance(c, Cell) else Cell(str(c))
                    cls = f' class="{html.escape(c.mark)}"' if c.mark else ""
                    tds.append(f"<td{cls}>{_html_inline(c.text)}</td>")
                out.append("<tr>" + "".join(tds) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(doc: Doc) -> str:
    out = []
    for b in doc.blocks:
        if b.kind == "h1":
            out += [f"# {_md_inline(b.text)}", ""]
        elif b.kind == "h2":
            out += [f"## {_md_inline(b.text)}", ""]
        elif b.kind == "h3":
            out += [f"### {_md_inline(b.text)}", ""]
        elif b.kind == "p":
            out += [_md_inline(b.text), ""]
        elif b.kind == "code":
            fence = "````" if "```" in b.text else "```"
            out += [fence, b.text, fence, ""]
        elif b.kind == "ul":
            out += [f"- {_md_inline(i)}" for i in b.items] + [""]
        elif b.kind == "img":
            out += [f"![{_md_inline(b.text)}]({b.name})", ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.head) + " |")
            out.append("|" + "---|" * len(b.head))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_") or "metric"


def scaling_png(curves: dict[tuple, list[dict]], refs: dict[tuple, list[dict]], metric: str, higher: bool,
                label) -> bytes:
    """Mean over seeds per size with a shaded 95% t interval, references as dashed horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(9.0, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sizes = sorted({r.get("num_train_examples") for rows in curves.values() for r in rows
                    if r.get("num_train_examples") is not None})
    positive = [s for s in sizes if s > 0]
    all_vals = []
    for i, (key, rows) in enumerate(curves.items()):
        color = f"C{i % 10}"
        xs, means, los, his = [], [], [], []
        for size, grp in _group(rows, lambda r: r.get("num_train_examples")).items():
            vals = _values(grp, metric)
            if not vals or size is None:
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
    styles = ["--", "-.", ":", (0, (5, 2, 1, 2))]
    for j, (key, rows) in enumerate(refs.items()):
        vals = _values(rows, metric)
        if not vals:
            continue
        all_vals += vals
        ax.axhline(statistics.fmean(vals), linestyle=styles[j % len(styles)], color=f"C{(len(curves) + j) % 10}",
                   linewidth=1.4, label=f"reference: {label(key)} (n={len(vals)})")
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _references_for(curve_t, refs: dict[tuple, list[dict]]) -> list[tuple]:
    """The reference lines a curve at temperature curve_t is compared with: for each reference (system,
    prompt) its line at the same temperature, or, when it was not evaluated at that temperature, all its lines."""
    by_sys: dict[tuple, list[tuple]] = {}
    for key in refs:
        by_sys.setdefault(key[:2], []).append(key)
    out = []
    for keys in by_sys.values():
        same = [k for k in keys if k[2] == curve_t]
        out += same or keys
    return out


HOW_MUCH_RULE = (
    "For each fine-tuned system, metric and reference: the smallest training size at which the fine-tune is "
    "better than the reference with confidence. Both are scored on the same eval items, so each size is compared "
    "with the reference item by item (paired), with the reference's own sampling noise counted: a cell is the "
    "fine-tune minus the reference (its mean over items and seeds), its 95% paired bootstrap interval (items "
    "resampled, and each side's seeds as a second level), and the two-sided p-value, Holm-adjusted across the "
    "sizes of that row. With one seed a side and 0/1 scores the p-value is McNemar's exact test. A failed request "
    "counts as 0, as in the means; items one side could not score are left out of both. A size beats the "
    f"reference when its Holm-adjusted p is below {ALPHA:g} and its interval lies wholly on the better side of 0 "
    "(above when higher is better, below when lower is better). Each curve is compared with each reference at "
    "its own temperature, or at the reference's temperatures when the reference was not evaluated at it.")


def _item_scores(rows: list[dict], metric: str, cache: dict) -> tuple[list[dict], int]:
    """The per-example scores of the finished rows (one map per seed), and how many finished rows have none
    (no generations file, or a metric that is not per example)."""
    maps, lacking = [], 0
    for r in rows:
        if not _done(r):
            continue
        path = r.get("generations")
        if (path, metric) not in cache:
            cache[(path, metric)] = per_example(path, metric) if path and Path(path).is_file() else {}
        if cache[(path, metric)]:
            maps.append(cache[(path, metric)])
        else:
            lacking += 1
    return maps, lacking


def _how_much(by_size: dict, ref_rows: list[dict], metric: str, higher: bool, sizes: list,
              cache: dict) -> list:
    """The cells of one (curve, metric, reference) row of the how-much-data table: reference mean, the
    smallest size that beats it, and one paired comparison per size, Holm-adjusted across the sizes."""
    ref_vals = _values(ref_rows, metric)
    ref_maps, _ = _item_scores(ref_rows, metric, cache)
    if not ref_vals or not ref_maps:
        why = "no value" if not ref_vals else "no per-example scores"
        return [Cell(why, "missing"), "–", *(Cell("–") for _ in sizes)]
    tested = {}
    for size, grp in by_size.items():
        maps, _ = _item_scores(grp, metric, cache)
        a, b, ids, dropped = align(maps, ref_maps)
        if ids:
            tested[size] = (paired_difference(a, b), dropped)
    adjusted = dict(zip(tested, holm([d.p_value for d, _ in tested.values()])))
    winners = [s for s in tested if beats(tested[s][0], adjusted[s], higher)]
    smallest = winners[0] if winners else None
    cells = []
    for size in sizes:
        grp = by_size.get(size, [])
        probs = _problems(grp, metric)
        if size not in tested:
            cells.append(_nothing_cell(probs) if probs else Cell("no per-example scores" if grp else "–",
                                                                  "missing" if grp else None))
            continue
        d, dropped = tested[size]
        text = (f"{d.text()}, p={p_text(adjusted[size])}" + (" (beats)" if size in winners else "")
                + f" ({d.n_seeds_a} vs {d.n_seeds_b} seeds, {d.n_items} items"
                + (f", {dropped} unshared left out" if dropped else "")
                + (f"; {_problem_text(probs)})" if probs else ")"))
        cells.append(Cell(text, "partial" if probs else None))
    ref_text = f"{statistics.fmean(ref_vals):.3f} (n={len(ref_vals)})"
    return [ref_text, Cell(_fmt(smallest)) if smallest is not None else Cell("not reached", "flag"), *cells]


def write_sweep_report(out_dir: Path, rows: list[dict], task: Task, cost_ctx: dict | None,
                       sources: dict) -> tuple[Path, Path]:
    """Write out_dir/report.html (self-contained: PNGs embedded as base64 data URIs, CSS inline, no external
    requests) and out_dir/report.md (the same content; its images written as PNG files next to it and
    linked). Return (html, md)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in rows]
    for r in rows:
        r.setdefault("status", "done")
        r.setdefault("reference", False)
        r.setdefault("system", r.get("backend") or "?")
    # the general-ability probes (eval.probes) count as headline metrics: forgetting is read beside the task
    probes = probe_metrics(rows)
    directions = {m.name: m.higher_is_better for m in task.metrics} | {p: True for p in probes}
    metric_order = list(task.headline) + [m.name for m in task.metrics if m.name not in task.headline] + probes
    headline = (list(task.headline) or [m.name for m in task.metrics][:1]) + probes
    temps = sorted({r.get("temperature") for r in rows}, key=_sort_key)
    many_t = len(temps) > 1
    default_variant = "default" if "default" in task.prompt_variants else (task.prompt_variants or ("default",))[0]

    def label(key: tuple) -> str:
        system, variant, t = key
        return f"{system}, prompt {variant}" + (f", T={_fmt_t(t)}" if many_t else "")

    curves = _group([r for r in rows if not r["reference"]], _curve_key)
    refs = _group([r for r in rows if r["reference"]], _curve_key)
    images: dict[str, bytes] = {}
    doc = Doc()
    sweep_dir = sources.get("sweep_dir") or ""
    title = f"Sweep report: {Path(sweep_dir).name or 'sweep'}"

    # 1. Title and status -------------------------------------------------------------------------
    doc.h1(title)
    doc.p(f"Task `{task.name}`. Metrics: " + "; ".join(
        f"`{m.name}` ({'higher' if m.higher_is_better else 'lower'} is better): {m.description}" for m in task.metrics)
          + "".join(f"; `{p}` (higher is better): the general-ability probes' {p.removeprefix('probes.')}, asked as "
                    "written at the same temperature" for p in probes) + ".")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    doc.p(f"Generated {now}. Sweep directory `{sweep_dir}`; results store `{sources.get('store') or '–'}`.")
    doc.p("Command that made the sweep:")
    doc.code(sources.get("command") or "(not recorded)")
    sizes = sorted({r.get("num_train_examples") for r in rows}, key=_sort_key)
    seeds = sorted({r.get("seed") for r in rows}, key=_sort_key)
    variants = sorted({r.get("prompt_variant") for r in rows}, key=_sort_key)
    doc.p(f"{len(rows)} rows, one per evaluated cell (system x training size x seed) x prompt variant x temperature. "
          f"Systems: {', '.join(sorted({r['system'] for r in rows})) or '–'}. Training sizes: "
          f"{', '.join(_fmt(s) for s in sizes) or '–'}. Seeds: {', '.join(_fmt(s) for s in seeds) or '–'}. "
          f"Temperatures: {', '.join(_fmt_t(t) for t in temps) or '–'}. Prompt variants: "
          f"{', '.join(str(v) for v in variants) or '–'}. "
          "Reference rows (drawn as horizontal lines): "
          f"{', '.join(label(k) for k in refs) or 'none'}.")
    doc.h2("Summary", "summary")
    statuses = list(("done",) + NOT_DONE) + sorted({r["status"] for r in rows} - {"done", *NOT_DONE})
    by_system = _group(rows, lambda r: (r["system"],))
    status_rows = []
    for (system,), grp in by_system.items():
        c = Counter(r["status"] for r in grp)
        status_rows.append([system, *(Cell(str(c[s]), s if c[s] and s != "done" else None) for s in statuses),
                            str(len(grp))])
    c = Counter(r["status"] for r in rows)
    status_rows.append(["all", *(Cell(str(c[s]), s if c[s] and s != "done" else None) for s in statuses),
                        str(len(rows))])
    doc.table(["system", *statuses, "rows"], status_rows, "table: status summary", rows)
    bad = [r for r in rows if not _done(r)]
    if bad:
        doc.p(f"Rows not done ({len(bad)}): each is left out of every mean below, and counted next to it.")
        doc.table(["system", "train examples", "seed", "prompt", "temperature", "status", "error", "run directory"],
                  [[r["system"], _fmt(r.get("num_train_examples")), _fmt(r.get("seed")), _fmt(r.get("prompt_variant")),
                    _fmt_t(r.get("temperature")), Cell(r["status"], r["status"] if r["status"] in NOT_DONE else "flag"),
                    r.get("error") or "–", r.get("run_dir") or "–"]
                   for r in sorted(bad, key=lambda r: _sort_key((r["system"], r.get("num_train_examples"),
                                                                 r.get("seed"), r.get("prompt_variant"),
                                                                 r.get("temperature"))))],
                  "table: rows not done", bad)
    elif rows:
        doc.p(f"All {len(rows)} rows are done.")
    else:
        doc.p("No rows: the sweep has no evaluated cell yet.")

    # 2. Scaling curves ---------------------------------------------------------------------------
    doc.h2("Scaling curves", "scaling")
    max_seeds = max((len(_values(g, m)) for rs in curves.values()
                     for g in _group(rs, lambda r: r.get("num_train_examples")).values() for m in metric_order),
                    default=0)
    doc.p(f"One line per (system, prompt variant{', temperature' if many_t else ''}): the mean over seeds at each "
          f"training size, shaded: the {int(CONFIDENCE * 100)}% Student t interval on the seed values, "
          "mean +- t(0.975, n-1) x s / sqrt(n). Dashed horizontal lines: reference rows (their mean over seeds). "
          "Means are over the seeds that finished; a point with fewer is labelled n=finished/planned."
          + (" Only one seed per point: no confidence band is drawn." if max_seeds <= 1 else
             " A point with one finished seed has no band."))
    sizes_c = sorted({r.get("num_train_examples") for rs in curves.values() for r in rs}, key=_sort_key)
    for metric in metric_order:
        higher = directions[metric]
        doc.h3(f"{metric} ({'higher' if higher else 'lower'} is better)")
        name = f"scaling-{_slug(metric)}.png"
        images[name] = scaling_png(curves, refs, metric, higher, label)
        doc.img(name, f"{metric} against training examples", images[name], rows)
        table_rows = []
        for key, rs in curves.items():
            by_size = _group(rs, lambda r: r.get("num_train_examples"))
            table_rows.append([label(key), Cell(""), *(_agg_cell(by_size[s], metric, interval=True) if s in by_size
                                                       else Cell("–") for s in sizes_c)])
        for key, rs in refs.items():
            table_rows.append([f"reference: {label(key)}", _agg_cell(rs, metric, interval=True),
                               *([Cell("")] * len(sizes_c))])
        single = [f"{label(k)} at {s}" for k, rs in curves.items()
                  for s, g in _group(rs, lambda r: r.get("num_train_examples")).items() if len(_values(g, metric)) == 1]
        doc.table(["system / train examples", "reference", *(str(s) for s in sizes_c)], table_rows,
                  f"table: {metric} by training size", rows)
        doc.p("Cells: mean [95% t interval] (n = finished seeds; what did not finish). References: mean over their "
              "rows, in the reference column." + (f" One seed only (no interval): {'; '.join(single)}." if single else ""))

    # 3. How much data ----------------------------------------------------------------------------
    doc.h2("How much data", "how-much-data")
    doc.p(HOW_MUCH_RULE)
    hm_rows, scores = [], {}
    for key, rs in curves.items():
        by_size = _group(rs, lambda r: r.get("num_train_examples"))
        for metric in metric_order:
            for rkey in _references_for(key[2], refs):
                hm_rows.append([label(key), metric, label(rkey),
                                *_how_much(by_size, refs[rkey], metric, directions[metric], sizes_c, scores)])
    if hm_rows:
        doc.table(["fine-tuned system", "metric", "reference", "reference mean", "smallest size that beats it",
                   *(f"{_fmt(s)} examples: difference [95% CI], Holm p" for s in sizes_c)],
                  hm_rows, "table: how much data", rows)
    else:
        doc.p("No reference rows or no fine-tuned systems in this sweep: nothing to compare.")

    # 4. Latency ----------------------------------------------------------------------------------
    doc.h2("Latency", "latency")
    doc.p("Per system, prompt variant, temperature and training size: the median over seeds of each row's time to "
          "first token (TTFT) and end-to-end (e2e) latency percentiles, in seconds. Speed-up: the e2e p50 of the "
          f"comparison divided by this row's e2e p50 (above 1: this one is faster); 'base' is the same system's "
          f"untrained base (0 examples) with the `{default_variant}` prompt at the same temperature (any, if not "
          "evaluated at it). Mean output tokens: the mean over seeds of each row's mean.")

    def lat(grp: list[dict], k: str) -> float | None:
        v = [r["latency"][k] for r in grp if _done(r) and r.get("latency") and r["latency"].get(k) is not None]
        return statistics.median(v) if v else None

    def base_of(system: str, t) -> list[dict]:
        cand = [r for r in rows if r["system"] == system and r.get("num_train_examples") == 0
                and r.get("prompt_variant") == default_variant]
        same = [r for r in cand if r.get("temperature") == t]
        return same or cand

    ref_pairs = {}  # (system, variant) of a reference -> its lines
    for rkey in refs:
        ref_pairs.setdefault(rkey[:2], []).append(rkey)
    lat_rows = []
    lat_groups = _group(rows, lambda r: (r["system"], r.get("prompt_variant"), r.get("temperature"),
                                         r.get("num_train_examples"), bool(r["reference"])))
    for gkey, grp in lat_groups.items():
        system, variant, t, size, is_ref = gkey
        e2e = lat(grp, "e2e_p50")
        n = sum(1 for r in grp if _done(r) and r.get("latency"))
        probs = _problems(grp)
        base = lat(base_of(system, t), "e2e_p50")
        speed = [Cell(f"{base / e2e:.2f}x") if base and e2e else Cell("–")]
        for pair, keys in ref_pairs.items():
            same = [k for k in keys if k[2] == t] or keys
            ref_e2e = lat([r for k in same for r in refs[k]], "e2e_p50")
            speed.append(Cell(f"{ref_e2e / e2e:.2f}x") if ref_e2e and e2e else Cell("–"))
        tokens = _values(grp, "mean_output_tokens")
        n_cell = Cell(f"{n}" + (f" ({_problem_text(probs)})" if probs else ""),
                      None if not probs else ("partial" if n else _mark(probs)))
        lat_rows.append([system + (" (reference)" if is_ref else ""), _fmt(variant), _fmt_t(t), _fmt(size), n_cell,
                         _fmt(lat(grp, "ttft_p50")), _fmt(lat(grp, "ttft_p90")), _fmt(e2e), _fmt(lat(grp, "e2e_p90")),
                         *speed, _fmt(statistics.fmean(tokens), 1) if tokens else "–"])
    doc.table(["system", "prompt", "T", "train examples", "n", "TTFT p50 (s)", "TTFT p90 (s)", "e2e p50 (s)",
               "e2e p90 (s)", "speed-up vs base", *(f"speed-up vs {s}, prompt {v}" for s, v in ref_pairs),
               "mean output tokens"], lat_rows, "table: latency", rows)

    # 5. Cost -------------------------------------------------------------------------------------
    doc.h2("Cost", "cost")
    if cost_ctx is None:
        doc.p("Costs were not computed for this sweep (no price table context was given).")
    else:
        ref_cost = cost_ctx.get("reference_cost_per_1k_requests_usd")
        doc.p(f"Prices: `{cost_ctx.get('prices_file', '–')}`, price table dated {cost_ctx.get('prices_checked', '–')} "
              f"({cost_ctx.get('currency', 'USD')}). Reference: prompting `{cost_ctx.get('reference_model', '–')}` "
              f"with the `{cost_ctx.get('reference_variant', '–')}` prompt, ${usd(ref_cost)} per 1,000 requests "
              f"({cost_ctx.get('reference_basis', '–')}). Training cost and cost per 1,000 requests: the mean over "
              "the seeds that have them (n); break-even (the number of requests after which training plus serving "
              "costs less than prompting the reference): each seed's value, in seed order.")
        cost_rows = []
        cost_groups = _group(rows, lambda r: (r["system"], r.get("prompt_variant"), r.get("temperature"),
                                              r.get("num_train_examples"), bool(r["reference"])))
        for (system, variant, t, size, is_ref), grp in cost_groups.items():
            def mean_cell(k):
                v = _values(grp, k)
                probs = _problems(grp)
                if not v:
                    return _nothing_cell(probs)
                return Cell(f"{usd(statistics.fmean(v))} (n={len(v)}" + (f"; {_problem_text(probs)})" if probs else ")"),
                            "partial" if probs else None)

            be = []
            for r in sorted(grp, key=lambda r: _sort_key(r.get("seed"))):
                if not _done(r):
                    be.append(r["status"])
                else:
                    v = r.get("break_even_requests")
                    be.append("–" if v is None else (f"{v:,}" if isinstance(v, int) else str(v)))
            basis = sorted({r.get("cost_basis") for r in grp if r.get("cost_basis")})
            cost_rows.append([system + (" (reference)" if is_ref else ""), _fmt(variant), _fmt_t(t), _fmt(size),
                              mean_cell("training_cost_usd"), mean_cell("cost_per_1k_requests_usd"),
                              Cell(" / ".join(be), "partial" if any(b in NOT_DONE for b in be) else None),
                              "; ".join(basis) or "–"])
        doc.table(["system", "prompt", "T", "train examples", "training cost ($)", "per 1,000 requests ($)",
                   "break-even (requests, per seed)", "priced as"], cost_rows, "table: cost", rows)

    # 6. Seeds and convergence --------------------------------------------------------------------
    doc.h2("Seeds and convergence", "seeds")
    doc.p("Spread across seeds: the sample standard deviation (n-1) of each headline metric over the seeds that "
          "finished, per system, prompt variant, temperature and training size (n in brackets; '–' with one seed).")
    sd_rows = []
    for key, rs in curves.items():
        for size, grp in _group(rs, lambda r: r.get("num_train_examples")).items():
            cells = []
            for metric in headline:
                v = _values(grp, metric)
                probs = _problems(grp, metric)
                txt = (f"{statistics.stdev(v):.3f}" if len(v) >= 2 else "–") + f" (n={len(v)}" + (
                    f"; {_problem_text(probs)})" if probs else ")")
                cells.append(Cell(txt, ("partial" if v else _mark(probs)) if probs else None))
            sd_rows.append([label(key), _fmt(size), *cells])
    doc.table(["system", "train examples", *(f"sd of {m}" for m in headline)], sd_rows, "table: seed spread",
              [r for rs in curves.values() for r in rs])
    doc.p("Convergence rule: " + CONVERGENCE_RULE)
    conv = convergence_table(rows)
    if conv:
        flagged = [c for c in conv if not c["converged"]]
        doc.p(f"{len(flagged)} of {len(conv)} trained cells with a loss curve did not converge"
              + (": " + "; ".join(f"{c['system']} n={c['num_train_examples']} seed {c['seed']}" for c in flagged)
                 if flagged else "") + ".")
        doc.table(["system", "train examples", "seed", "logged steps", "first loss", "final loss (mean of last 3)",
                   "other seeds", "verdict"],
                  [[c["system"], _fmt(c["num_train_examples"]), _fmt(c["seed"]), str(c["n_logged"]), _fmt(c["first"]),
                    _fmt(c["final"]), str(c["n_other_seeds"]),
                    Cell("converged") if c["converged"] else Cell("did not converge: " + "; ".join(c["reasons"]), "flag")]
                   for c in conv], "table: convergence",
                  [r for r in rows if not r.get("reference") and r.get("loss")])
    with_loss = {(r["system"], r.get("num_train_examples"), r.get("seed")) for r in rows if r.get("loss")}
    trained_no_loss = sorted({(r["system"], r.get("num_train_examples"), r.get("seed")) for r in rows
                              if not r["reference"] and (r.get("num_train_examples") or 0) > 0} - with_loss,
                             key=_sort_key)
    if trained_no_loss:
        doc.p("Trained cells without a loss curve (convergence not judged): " + "; ".join(
            f"{s} n={n} seed {sd}" for s, n, sd in trained_no_loss) + ".")
    if not conv and not trained_no_loss:
        doc.p("No trained cells with a loss curve in this sweep.")

    # 7. Temperature ------------------------------------------------------------------------------
    doc.h2("Temperature", "temperature")
    if not many_t:
        doc.p(f"One temperature in this sweep ({', '.join(_fmt_t(t) for t in temps)}): no per-temperature table.")
    else:
        doc.p("Each headline metric by training size and sampling temperature: mean over finished seeds (n). "
              f"Change: the mean at T={_fmt_t(temps[-1])} minus the mean at T={_fmt_t(temps[0])}; a fall that grows "
              "with training size is forgetting at higher temperatures.")
        by_sv = _group(rows, lambda r: (r["system"], r.get("prompt_variant"), bool(r["reference"])))
        for metric in headline:
            higher = directions[metric]
            doc.h3(f"{metric} by temperature ({'higher' if higher else 'lower'} is better)")
            t_rows = []
            for (system, variant, is_ref), grp in by_sv.items():
                for size, g2 in _group(grp, lambda r: r.get("num_train_examples")).items():
                    by_t = _group(g2, lambda r: (r.get("temperature"),))
                    cells = [_agg_cell(by_t[(t,)], metric) if (t,) in by_t else Cell("–") for t in temps]
                    lo_v = _values(by_t.get((temps[0],), []), metric)
                    hi_v = _values(by_t.get((temps[-1],), []), metric)
                    change = f"{statistics.fmean(hi_v) - statistics.fmean(lo_v):+.3f}" if lo_v and hi_v else "–"
                    t_rows.append([system + (" (reference)" if is_ref else ""), _fmt(variant), _fmt(size), *cells,
                                   change])
            doc.table(["system", "prompt", "train examples", *(f"T={_fmt_t(t)}" for t in temps),
                       f"change T={_fmt_t(temps[0])} to T={_fmt_t(temps[-1])}"], t_rows,
                      f"table: {metric} by temperature", rows)

    # 8. Pairwise judgements ------------------------------------------------------------------------
    from .pairwise_runs import describe, pooled, rate_text, read_comparisons

    found, stale = read_comparisons(out_dir)
    if found or stale:
        doc.h2("Double-blind pairwise judgements", "pairwise")
        if found:
            doc.p(describe(found))
            doc.table(["system", "against", "temperature", "comparisons (seeds)", "pairs judged", "win [95% CI]",
                       "tie [95% CI]", "loss [95% CI]", "unparsable", "failed"],
                      [[r["x"], r["y"], _fmt_t(r["temperature"]), str(r["comparisons"]), str(r["n"]),
                        rate_text(r, "win"), rate_text(r, "tie"), rate_text(r, "loss"),
                        Cell(str(r["unparsable"]), "flag" if r["unparsable"] else None), str(r["failed"])]
                       for r in pooled(found)])
        if stale:
            doc.p(f"Stale judgements left out (a side was evaluated again since; `ftscale sweep` judges them again): "
                  f"{', '.join(stale)}.")

    # 9. Sources ----------------------------------------------------------------------------------
    doc.h2("Sources", "sources")
    doc.p("Command that made the sweep:")
    doc.code(sources.get("command") or "(not recorded)")
    run_dirs = sorted({r.get("run_dir") for r in rows if r.get("run_dir")})
    ids = {d: f"R{i + 1}" for i, d in enumerate(run_dirs)}
    status_of = {}
    for r in rows:
        if r.get("run_dir"):
            status_of.setdefault(r["run_dir"], Counter())[r["status"]] += 1
    doc.p(f"Run directories (sweep directory `{sweep_dir}`, results store `{sources.get('store') or '–'}`); a "
          "directory holds one trained or evaluated cell, and a row's generations, scores and loss curve are in it:")
    doc.table(["id", "run directory", "rows (status)"],
              [[ids[d], d, Cell(_problem_text(status_of[d]),
                                None if set(status_of[d]) == {"done"} else "partial")] for d in run_dirs],
              None)
    no_dir = [r for r in rows if not r.get("run_dir")]
    if no_dir:
        doc.p(f"Rows without a run directory ({len(no_dir)}): " + "; ".join(
            f"{r['system']} n={_fmt(r.get('num_train_examples'))} seed {_fmt(r.get('seed'))} "
            f"prompt {_fmt(r.get('prompt_variant'))} T={_fmt_t(r.get('temperature'))} ({r['status']})"
            for r in no_dir) + ".")
    src_rows = []
    for name, used in doc.sources:
        dirs = sorted({ids[r["run_dir"]] for r in used if r.get("run_dir")}, key=lambda s: int(s[1:]))
        src_rows.append([name, _id_ranges(dirs) or "–", str(sum(1 for r in used if not r.get("run_dir")))])
    doc.table(["figure / table", "made from run directories", "rows without a directory"], src_rows)

    md = render_markdown(doc)
    page = render_html(doc, title, images)
    for name, png in images.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
    md_path = write_text(out_dir / "report.md", md)
    html_path = write_text(out_dir / "report.html", page)
    return html_path, md_path


def _id_ranges(ids: list[str]) -> str:
    """R1, R2, R3, R5 -> R1–R3, R5."""
    nums = [int(i[1:]) for i in ids]
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(f"R{start}" if start == n else f"R{start}–R{n}")
            start = None
    return ", ".join(out)
