"""The sweep report: its convergence rule and its paired how-much-data comparisons (recomputed from the
per-example scores the rows point at), and the HTML page
opened in a real headless Chromium (Debian's package, driven by Playwright): no console errors, every
image loaded, the sections present, the failed cell marked, a screenshot taken."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ftscale.eval.latency import Distribution, Latency
from ftscale.eval.result_row import ResultRow
from ftscale.eval.tasks import Metric, Task, get_task

try:
    from ftscale.eval import sweep_report as sr
except ImportError:  # an editable install of another checkout: load this checkout's module by path
    _path = Path(__file__).resolve().parents[1] / "eval" / "sweep_report.py"
    _spec = importlib.util.spec_from_file_location("ftscale.eval.sweep_report", _path)
    sr = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = sr
    _spec.loader.exec_module(sr)

from ftscale.eval import convergence, stats

SECTIONS = ["Summary", "Scaling curves", "How much data", "Latency", "Cost", "Seeds and convergence",
            "Temperature", "Sources"]


# ------------------------------------------------------------------------------------------------ statistics

def test_convergence_rule():
    # (a) the loss must fall below 0.9 x its first value (final = mean of the last 3)
    assert convergence.final_loss([3.0, 2.0, 1.0, 1.1, 1.2]) == pytest.approx(1.1)
    assert convergence.convergence_verdict([2.0, 1.5, 1.0, 1.0, 1.0], []) == []
    flat = convergence.convergence_verdict([2.0, 1.9, 1.85, 1.8, 1.83], [])  # final 1.8267 > 0.9 x 2.0 = 1.8
    assert len(flat) == 1 and "not below 0.9" in flat[0]
    assert convergence.convergence_verdict([2.0, 1.9, 1.7, 1.8, 1.79], []) == []  # final 1.763 < 1.8
    assert convergence.convergence_verdict([2.0], []) != []  # one logged value: no fall
    assert convergence.convergence_verdict([2.0, float("nan"), 1.0], []) == ["the loss curve has a non-finite value"]
    # (b) an outlier among >= 3 seeds: others' median 0.81, MAD 0.01 floored to 0.05: threshold 0.96
    assert convergence.convergence_verdict([2.5, 1.5, 0.95, 0.95, 0.95], [0.80, 0.82]) == []
    out = convergence.convergence_verdict([2.5, 1.5, 0.97, 0.97, 0.97], [0.80, 0.82])
    assert len(out) == 1 and "MAD 0.050" in out[0]
    # a MAD above the floor: others [0.5, 0.8, 1.1] -> median 0.8, MAD 0.3, threshold 1.7
    assert convergence.convergence_verdict([3.0, 2.0, 1.69, 1.69, 1.69], [0.5, 0.8, 1.1]) == []
    assert convergence.convergence_verdict([3.0, 2.0, 1.71, 1.71, 1.71], [0.5, 0.8, 1.1]) != []
    # fewer than 3 seeds: the outlier test does not apply
    assert convergence.convergence_verdict([2.5, 1.5, 1.5, 1.5, 1.5], [0.8]) == []


# ------------------------------------------------------------------------------------------------ a sweep

LORA, QLORA, GPT = "smollm2-135m LoRA", "smollm2-135m QLoRA", "openai gpt-4.1-2025-04-14"
SIZES, SEEDS, TEMPS = (0, 25, 50, 100), (1, 2, 3), (0.0, 1.0)
FAILED_ERROR = "training exited with code 1: loss is NaN <script>alert('x')</script>"


def _loss(system, size, seed):
    if system == LORA and size == 25 and seed == 3:
        return [2.5, 2.48, 2.51, 2.47, 2.49, 2.5]  # flat: rule (a)
    if system == QLORA and size == 100 and seed == 1:
        return [2.5, 2.0, 1.6, 1.42, 1.4, 1.38]  # falls, but ends far above its seeds: rule (b)
    end = 0.8 + 0.01 * seed + (0.05 if system == QLORA else 0.0)
    return [2.5 - (2.5 - end) * (1 - math.exp(-i / 2)) for i in range(12)]


N_ITEMS = 200
METRICS = ("format_ok", "answer_correct", "both")


def _items(rate: float) -> list[float]:
    """200 per-example 0/1 scores, the first round(rate x 200) correct: the same items are the easy ones for
    every system (nested), as when items differ in difficulty."""
    k = round(rate * N_ITEMS)
    return [1.0] * k + [0.0] * (N_ITEMS - k)


def _words(mean: float) -> list[float]:
    return [mean + (1.0 if i % 2 else -1.0) for i in range(N_ITEMS)]  # graded, mean exactly `mean`


def _write_generations(path: Path, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    per_metric = {m: _items(metrics[m]) for m in METRICS} | {"words": _words(metrics["words"])}
    with open(path, "w") as f:
        for i in range(N_ITEMS):
            f.write(json.dumps({"id": f"ex{i}", "error": None,
                                "scores": {m: v[i] for m, v in per_metric.items()}}) + "\n")


def _latency(ttft_p50, ttft_p90, e2e_p50, e2e_p90) -> Latency:
    """A row's latency; the report reads the p50 and p90 of TTFT and end-to-end."""
    return Latency(requests=N_ITEMS, failed=0, wall_s=None, ttft_s=Distribution(ttft_p50, ttft_p50, ttft_p90, ttft_p90),
                   tpot_s=None, itl_s=None, e2e_s=Distribution(e2e_p50, e2e_p50, e2e_p90, e2e_p90), output_tokens=None,
                   input_tokens=None)


def _row(base, system, size, seed, t, *, variant="default", status="done", error=None, reference=False) -> ResultRow:
    quality = {0: 0.0, 25: 0.55, 50: 0.82, 100: 0.93}[size] if not reference else (0.97 if system == GPT else 0.7)
    quality -= 0.04 * (system == QLORA) + (0.05 * size / 100 if t >= 1.0 else 0.0)  # forgetting at T=1
    quality = min(1.0, max(0.0, quality + 0.02 * (seed - 2)))
    latency = (_latency(0.4, 0.6, 2.0, 3.1) if system == GPT else
               _latency(0.05, 0.08, 3.8 if size == 0 else 1.1 + 0.01 * seed, 5.0 if size == 0 else 1.5))
    run_dir = None if status == "missing" else f"runs/sweep-demo/{system.replace(' ', '_')}/n{size:04d}-seed{seed}"
    row = ResultRow(
        cell=f"n{size:04d}-seed{seed}", num_train_examples=size, seed=seed, prompt_variant=variant,
        backend="openai" if system == GPT else "hf", model=system, n_eval=200, failed=0,
        not_scorable={}, mean_output_tokens=44.0 if size == 0 else 21.0,
        mean_input_tokens=65.6, train_wall_time_s=None if size == 0 else 30.0 * size / 25,
        train_tokens_per_s=None, train_machine=None, trained_tokens=None, estimated_billed_tokens=None,
        eval_wall_time_s=70.0, eval_requests=200, eval_machine=None,
        generations=f"{base}/{run_dir}/eval-{variant}-t{t:g}/generations.jsonl" if run_dir else None,
        training_cost_usd=0.0 if size == 0 else 0.01 * size / 25,
        cost_basis="gpt-4.1-2025-04-14 token prices" if system == GPT else "cpu at $0.10/h",
        cost_per_1k_requests_usd=0.9 if system == GPT else 0.0097, break_even_requests=None if system == GPT else 12,
        system=system, in_sweep=True, temperature=t, status=status, error=error, run_dir=run_dir,
        loss=_loss(system, size, seed) if size > 0 and status != "missing" else None,
        latency=latency if status == "done" else None, is_reference=reference,
        metrics={"format_ok": None, "answer_correct": None, "both": None},
    )
    if status == "done":  # rates of whole items out of 200, as an evaluation gives them
        row.metrics = {"format_ok": round(quality * N_ITEMS) / N_ITEMS,
                       "answer_correct": round(quality * 0.9 * N_ITEMS) / N_ITEMS,
                       "both": round(quality * 0.85 * N_ITEMS) / N_ITEMS, "words": 40.0 - 0.2 * size + seed}
        _write_generations(Path(row.generations), row.metrics)
    return row


def sweep_rows(base: Path) -> list[ResultRow]:
    """The demo sweep's rows; the finished ones with their generations files written under `base`."""
    rows = []
    for system in (LORA, QLORA):
        for size in SIZES:
            for seed in SEEDS:
                for t in TEMPS:
                    if (system, size, seed) == (QLORA, 50, 2):
                        rows.append(_row(base, system, size, seed, t, status="failed", error=FAILED_ERROR))
                    elif (system, size, seed, t) == (LORA, 100, 3, 1.0):
                        rows.append(_row(base, system, size, seed, t, status="missing"))
                    else:
                        rows.append(_row(base, system, size, seed, t))
    for t in TEMPS:  # references: the untrained base with few-shot prompts (3 seeds) and a prompted bigger model
        for seed in SEEDS:
            rows.append(_row(base, LORA.replace("LoRA", "base"), 0, seed, t, variant="few_shot", reference=True))
        rows.append(_row(base, GPT, 0, 1, t, variant="few_shot", reference=True))
    return rows


COST_CTX = {"prices_checked": "2025-06", "currency": "USD", "prices_file": "configs/prices.yaml",
            "reference_model": "gpt-4.1-2025-04-14", "reference_variant": "few_shot",
            "reference_cost_per_1k_requests_usd": 0.90246, "reference_basis": "measured tokens",
            "cached_input_fraction": 0.0}
SOURCES = {"command": "ftscale sweep configs/sweeps/formatting-demo.yaml", "sweep_dir": "runs/sweep-demo",
           "store": "runs/sweep-demo/results.jsonl"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-report")
    html_path, md_path = sr.write_sweep_report(out, sweep_rows(out), get_task("formatting"), COST_CTX, SOURCES)
    return out, html_path, md_path


def test_report_files_and_content(report):
    out, html_path, md_path = report
    assert (html_path, md_path) == (out / "report.html", out / "report.md")
    page, md = html_path.read_text(), md_path.read_text()
    # Markdown: the same sections in order, PNGs beside it and linked
    heads = [h[3:] for h in md.splitlines() if h.startswith("## ")]
    assert heads == SECTIONS
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["scaling-format_ok.png", "scaling-answer_correct.png", "scaling-both.png"]  # headline first
    for name in links:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # HTML: self-contained, escaped
    assert "<script" not in page and "&lt;script&gt;alert(" in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count('src="data:image/png;base64,') == 3
    # every failed or missing row is listed with its error
    assert md.count("loss is NaN") == 2 and "| missing |" in md
    # section 3: each size against each reference, paired on the items, the seeds pooled; Holm across sizes
    how = md.split("## How much data")[1].split("## Latency")[0]
    lines = [line for line in how.splitlines() if line.startswith("| smollm2")]
    assert len(lines) == 24  # 4 curves x 3 metrics x 2 references
    row = next(line for line in lines if line.startswith(
        "| smollm2-135m LoRA, prompt default, T=0 | format_ok | smollm2-135m base, prompt few_shot, T=0 | "))
    # recomputed from the per-example scores: the LoRA's 3 seeds against the base's 3 seeds at each size
    ref = [_items(q) for q in (0.68, 0.70, 0.72)]
    tested = [stats.paired_difference([_items(q) for q in qs], ref)
              for qs in ((0.0, 0.0, 0.02), (0.53, 0.55, 0.57), (0.80, 0.82, 0.84), (0.91, 0.93, 0.95))]
    adjusted = stats.holm([d.p_value for d in tested])
    cells = [f"{d.text()}, p={stats.p_text(p)}" + (" (beats)" if i >= 2 else "") + " (3 vs 3 seeds, 200 items)"
             for i, (d, p) in enumerate(zip(tested, adjusted))]
    assert row.endswith("| 0.700 (n=3) | 50 | " + " | ".join(cells) + " |"), row
    assert tested[2].low > 0 and adjusted[2] < 0.05 and tested[1].high < 0  # 25 is worse, 50 beats it
    # the prompted model (one seed, 0.95) is never beaten; at 100 examples (0.93 mean) the interval reaches 0
    gpt = [line for line in lines if "| openai gpt-4.1-2025-04-14, prompt few_shot" in line]
    assert len(gpt) == 12 and all("| 0.950 (n=1) | not reached |" in line or "| 0.855 (n=1) | not reached |" in line
                                  or "| 0.810 (n=1) | not reached |" in line for line in gpt)
    assert how.count("| not reached |") == 12 and how.count("| 50 |") == 12
    # a failed or missing seed: the size is compared on the seeds that finished, and says what did not
    assert "(2 vs 3 seeds, 200 items; 1 failed) |" in how and "(2 vs 1 seeds, 200 items; 1 missing) |" in how
    assert "p=0.0000" not in how
    # section 6: both non-converged cells flagged, each by its rule
    conv = md.split("## Seeds and convergence")[1]
    assert "2 of 18 trained cells" in conv
    assert "not below 0.9 x first loss" in conv and "above the other seeds' median" in conv
    assert convergence.CONVERGENCE_RULE in md
    # means over the seeds that finished, with n and what did not
    assert "(n=2; 1 failed)" in md and "(n=2; 1 missing)" in md
    assert "price table dated 2025-06" in md and SOURCES["command"] in md


def test_report_without_costs_and_one_seed(tmp_path):
    rows = [r for r in sweep_rows(tmp_path) if r.seed == 1 and r.temperature == 0.0]
    _, md_path = sr.write_sweep_report(tmp_path, rows, get_task("formatting"), None, SOURCES)
    md = md_path.read_text()
    assert "Costs were not computed" in md
    assert "Only one seed per point: no confidence band" in md
    # one seed a side: McNemar's exact test on the items (discordant pairs all one way: 24 at 50 examples)
    how = md.split("## How much data")[1].split("## Latency")[0]
    tested = [stats.paired_difference([_items(q)], [_items(0.68)]) for q in (0.0, 0.53, 0.80, 0.91)]
    d, p = tested[2], stats.holm([t.p_value for t in tested])[2]
    assert d.method.startswith("McNemar") and d.p_value == pytest.approx(2 * 0.5 ** 24)
    assert f"| {d.text()}, p={stats.p_text(p)} (beats) (1 vs 1 seeds, 200 items) |" in how
    assert p == d.p_value and stats.p_text(p) == "1.2e-07"  # Holm: the largest of the 4 p-values, times 1
    assert "needs >= 2 seeds" not in md
    assert "One temperature in this sweep" in md


def test_degenerate_sweeps_still_render(tmp_path):
    """All cells failed, no references, only references, no rows at all, a lower-is-better metric."""
    task = get_task("formatting")
    lower = Task(name="lengthy", metrics=(Metric("words", "output length", higher_is_better=False),),
                    prompt_variants=("default",), build_messages=task.build_messages, score=task.score)
    rows = sweep_rows(tmp_path)
    failed = [replace(r, status="failed", error="boom",
                      metrics=r.metrics | {"format_ok": None, "answer_correct": None, "both": None})
              for r in rows if not r.is_reference]
    words = [replace(r, metrics=r.metrics | {"words": None}) if r.status != "done" else r for r in rows]
    cases = {"all-failed": (failed, task), "no-references": ([r for r in rows if not r.is_reference], task),
             "only-references": ([r for r in rows if r.is_reference], task), "empty": ([], task),
             "lower-is-better": (words, lower)}
    for name, (case_rows, case_task) in cases.items():
        html_path, md_path = sr.write_sweep_report(tmp_path / name, case_rows, case_task, None, SOURCES)
        md = md_path.read_text()
        assert [h[3:] for h in md.splitlines() if h.startswith("## ")] == SECTIONS, name
        assert html_path.read_text().count("<img ") == len(case_task.metrics), name
    md = (tmp_path / "all-failed" / "report.md").read_text()
    assert "| failed (3) |" in md and md.count("boom") == 48
    md = (tmp_path / "lower-is-better" / "report.md").read_text()
    assert "### words (lower is better)" in md
    # fewer words is better: LoRA at T=0 (mean 42 words untrained, 37 at 25 examples) beats the base few-shot
    # reference (42) from 25 examples, by -5 words; equal means at 0 are not better
    row = next(line for line in md.splitlines() if line.startswith(
        "| smollm2-135m LoRA, prompt default, T=0 | words | smollm2-135m base, prompt few_shot, T=0 | "))
    cells = row.split(" | ")
    assert cells[3:5] == ["42.000 (n=3)", "25"]
    assert cells[5].startswith("+0.000 [-") and "(beats)" not in cells[5]
    assert cells[6].startswith("-5.000 [") and "(beats)" in cells[6]
    assert "All 0 rows" not in (tmp_path / "empty" / "report.md").read_text()
    assert "No rows" in (tmp_path / "empty" / "report.md").read_text()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `make setup` (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make setup` (pip install playwright)")
    _, html_path, _ = report
    console_errors, requests, page_errors, dialogs = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent.trim())")
            failed_cells = page.eval_on_selector_all("td.failed", "els => els.map(e => e.textContent.trim())")
            text = page.inner_text("body")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert console_errors == [] and page_errors == [] and dialogs == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # no request leaves the page
    assert len(images) == 3 and all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert headings == SECTIONS
    assert "failed" in failed_cells  # the failed cell, marked in the tables
    assert "loss is NaN <script>alert('x')</script>" in text  # shown as text, never run
    data = shot.read_bytes()
    w, h = _png_size(data)
    assert len(data) > 10_000 and w == 1280 and h > 900


def test_a_one_item_difference_against_an_exact_zero_is_not_reached(tmp_path):
    """The old report's case: three seeds at 0.010 (the same 1 of 100 items right) against one base evaluation
    at 0.000 was 'beaten' with p = 0.0000 (zero spread counted as exact). Paired on the items, with the base's
    own evaluation as its sample, it is not."""
    def rows_at(system, size, seed, k, reference):
        row = _row(tmp_path / "rows", system, size, seed, 0.0, variant="default", reference=reference)
        path = tmp_path / f"{system}-{seed}.jsonl"
        path.write_text("".join(json.dumps({"id": f"e{i}", "error": None, "scores": {m: float(i < k) for m in METRICS}})
                                + "\n" for i in range(100)))
        return replace(row, metrics=row.metrics | {m: k / 100 for m in METRICS}, generations=str(path))

    rows = [rows_at(LORA.replace("LoRA", "base"), 0, 1, 0, True)] + [rows_at(LORA, 25, s, 1, False) for s in SEEDS]
    _, md_path = sr.write_sweep_report(tmp_path / "out", rows, get_task("formatting"), None, SOURCES)
    row = next(line for line in md_path.read_text().splitlines()
               if line.startswith("| smollm2-135m LoRA, prompt default | answer_correct |"))
    d = stats.paired_difference([[float(i < 1) for i in range(100)]] * 3, [[0.0] * 100])
    assert row.endswith(f"| 0.000 (n=1) | not reached | {d.text()}, p={stats.p_text(d.p_value)} "
                        "(3 vs 1 seeds, 100 items) |"), row
    assert d.diff == pytest.approx(0.01) and d.low <= 0.0 and d.p_value > 0.5
