"""The sweep report: every backend of a sweep in one comparison, as self-contained HTML and as Markdown,
with its rows as data (results.json), from which the same report can be rendered again without the runs.

A sweep is a grid of cells (systems x training sizes x seeds), each evaluated with one or more prompt
variants at one or more temperatures; one row per (cell, prompt variant, temperature). The report
shows scaling curves with seed confidence intervals, how much data a fine-tune needs to beat each
reference (a paired comparison on the same eval items, with its interval), latency, cost, seed spread
and convergence, the effect of temperature, and which run directories every figure and table was made from.

Rows that did not finish (failed, missing, running) are listed and marked in every table; a mean is
over the seeds that finished, with n shown, never over a silently shortened list.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ftscale.atomic import atomic_path, write_text
from ftscale.eval.how_much_data import how_much_data_section
from ftscale.eval.report_document import Doc, render_html, render_markdown
from ftscale.eval.latency import Latency
from ftscale.eval.result_row import Probes, ResultRow
from ftscale.eval.sweep_rows import sweep_view
from ftscale.eval.sweep_sections import (cost_section, latency_section, pairwise_section, parity_section,
                                         scaling_section, seeds_section, sources_section, summary_section,
                                         temperature_section, title_section)
from ftscale.eval.tasks import Task


def write_sweep_report(out_dir: Path, rows: list[ResultRow], task: Task, cost_ctx: dict | None,
                       sources: dict) -> tuple[Path, Path]:
    """Write out_dir/report.html (self-contained: PNGs embedded as base64 data URIs, CSS inline, no external
    requests) and out_dir/report.md (the same content; its images written as PNG files next to it and
    linked). Return (html, md)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    view = sweep_view(rows, task, sources.get("sweep_dir") or "")
    doc = Doc()
    title_section(doc, view, sources)
    summary_section(doc, view)
    scaling_section(doc, view)
    how_much_data_section(doc, view)
    parity_section(doc, view)
    latency_section(doc, view)
    cost_section(doc, view, cost_ctx)
    seeds_section(doc, view)
    temperature_section(doc, view)
    pairwise_section(doc, out_dir)
    sources_section(doc, view, sources)

    md = render_markdown(doc)
    page = render_html(doc, view.title)
    for name, png in doc.images().items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
    md_path = write_text(out_dir / "report.md", md)
    html_path = write_text(out_dir / "report.html", page)
    write_text(out_dir / ROWS, json.dumps(rows_as_json(rows, task, cost_ctx, sources), indent=1) + "\n")
    return html_path, md_path


ROWS = "results.json"  # the report's rows as data: every field of every row, the cost context and the sources


def rows_as_json(rows: list[ResultRow], task: Task, cost_ctx: dict | None, sources: dict) -> dict:
    """What `rows_from_json` reads back: the same report can be rendered again from it, without the runs."""
    out = []
    for r in rows:
        d = dataclasses.asdict(r)
        d["latency"] = r.latency.as_dict() if r.latency else None
        out.append(d)
    return {"task": task.name, "rows": out, "cost": cost_ctx, "sources": sources}


def rows_from_json(data: dict) -> list[ResultRow]:
    rows = []
    for d in data["rows"]:
        d = dict(d)
        d["latency"] = Latency.from_dict(d["latency"]) if d.get("latency") else None
        d["probes"] = Probes(**d["probes"]) if d.get("probes") else None
        rows.append(ResultRow(**d))
    return rows
