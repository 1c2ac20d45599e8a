"""The sweep report: its statistics checked against closed forms and textbook values, and the HTML page
opened in a real headless Chromium (Debian's package, driven by Playwright): no console errors, every
image loaded, the sections present, the failed cell marked, a screenshot taken."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from ftscale.eval.tasks import Metric, Task, get_task

try:
    from ftscale.eval import sweep_report as sr
except ImportError:  # an editable install of another checkout: load this checkout's module by path
    _path = Path(__file__).resolve().parents[1] / "eval" / "sweep_report.py"
    _spec = importlib.util.spec_from_file_location("ftscale.eval.sweep_report", _path)
    sr = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = sr
    _spec.loader.exec_module(sr)

try:
    from scipy import stats as scipy_stats
except ImportError:
    scipy_stats = None

SECTIONS = ["Summary", "Scaling curves", "How much data", "Latency", "Cost", "Seeds and convergence",
            "Temperature", "Sources"]


# ------------------------------------------------------------------------------------------------ statistics

def test_t_distribution_closed_forms():
    for t in (-7.0, -1.3, 0.0, 0.4, 2.0, 12.7):
        assert sr.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert sr.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    for p in (0.6, 0.9, 0.95, 0.975, 0.995):
        assert sr.t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert sr.t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert sr.t_ppf(0.025, 2) == pytest.approx(-sr.t_ppf(0.975, 2))


def test_t_quantiles_match_the_textbook_table():
    # two-sided 95% (0.975 quantile) and one-sided 95% critical values, as printed in t tables
    table = {(0.975, 2): 4.303, (0.975, 4): 2.776, (0.975, 10): 2.228, (0.975, 30): 2.042, (0.95, 4): 2.132,
             (0.95, 2): 2.920, (0.99, 5): 3.365}
    for (p, df), v in table.items():
        assert sr.t_ppf(p, df) == pytest.approx(v, abs=5e-4)
    assert sr.t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal limit
    if scipy_stats is not None:
        for p, df in [(0.975, 3), (0.95, 3.7166), (0.9, 17.3)]:
            assert sr.t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
        for t, df in [(2.5, 3.7), (-1.2, 7.3), (0.3, 1.5)]:
            assert sr.t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9)


def test_t_interval():
    mean, lo, hi = sr.t_interval([0.8, 0.9, 1.0])
    half = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025) * 0.1 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n)
    assert mean == pytest.approx(0.9)
    assert (lo, hi) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert half == pytest.approx(0.248414, abs=1e-6)
    assert sr.t_interval([0.7]) == (0.7, None, None)  # one seed: no interval
    assert sr.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_welch_one_sided():
    # equal variances 0.01, n=3 each: t = 0.3 / sqrt(0.02/3) = 3.6742, df = 4 exactly
    res = sr.welch_one_sided([0.8, 0.9, 1.0], [0.5, 0.6, 0.7])
    assert res.test == "Welch"
    assert res.t == pytest.approx(3.6742346, rel=1e-7) and res.df == pytest.approx(4.0)
    # closed-form survival function of t with 4 degrees of freedom
    u = res.t / math.sqrt(4 + res.t ** 2)
    assert res.p == pytest.approx(0.5 - 0.5 * u * (1.5 - 0.5 * u * u), rel=1e-9)
    assert res.p == pytest.approx(0.0106558, rel=1e-5) and res.beats()
    # unequal variances and sizes: Welch-Satterthwaite df 3.7166 (scipy: 0.361158, p 0.368783)
    res = sr.welch_one_sided([1, 2, 3, 4], [2, 2.5])
    assert (res.t, res.df, res.p) == (pytest.approx(0.3611576, rel=1e-6), pytest.approx(3.7166276, rel=1e-6),
                                      pytest.approx(0.3687827, rel=1e-6))
    assert not res.beats()
    # lower is better: the same data tested in the other direction
    assert sr.welch_one_sided([1, 2, 3, 4], [2, 2.5], higher_is_better=False).p == pytest.approx(0.6312173, rel=1e-6)
    assert sr.welch_one_sided([0.5, 0.6, 0.7], [0.8, 0.9, 1.0], higher_is_better=False).beats()
    # no spread on either side: exact, significant only in the better direction
    assert sr.welch_one_sided([1.0, 1.0], [0.5, 0.5]).p == 0.0
    assert sr.welch_one_sided([0.5, 0.5], [0.5, 0.5]).p == 1.0
    with pytest.raises(ValueError):
        sr.welch_one_sided([1.0], [0.5, 0.6])
    if scipy_stats is not None:
        x, y = [0.61, 0.72, 0.68, 0.7], [0.55, 0.58, 0.66]
        ref = scipy_stats.ttest_ind(x, y, equal_var=False, alternative="greater")
        assert sr.welch_one_sided(x, y).p == pytest.approx(ref.pvalue, rel=1e-9)


def test_one_sample_against_a_single_reference_value():
    # t = (0.9 - 0.7) / (0.1 / sqrt 3) = 3.4641, df = 2: p = 1/2 - t / (2 sqrt(2 + t^2)) = 0.03709
    res = sr.better_than_reference([0.8, 0.9, 1.0], [0.7])
    assert res.test == "one-sample" and res.df == 2
    assert res.t == pytest.approx(2 * math.sqrt(3))
    assert res.p == pytest.approx(0.5 - res.t / (2 * math.sqrt(2 + res.t ** 2)), rel=1e-9)
    assert res.p == pytest.approx(0.0370900, rel=1e-5) and res.beats()
    assert sr.better_than_reference([0.8, 0.9, 1.0], [0.7], higher_is_better=False).p == pytest.approx(0.96291, rel=1e-5)
    assert sr.better_than_reference([0.8, 0.9, 1.0], [0.5, 0.6, 0.7]).test == "Welch"


def test_convergence_rule():
    # (a) the loss must fall below 0.9 x its first value (final = mean of the last 3)
    assert sr.final_loss([3.0, 2.0, 1.0, 1.1, 1.2]) == pytest.approx(1.1)
    assert sr.convergence_verdict([2.0, 1.5, 1.0, 1.0, 1.0], []) == []
    flat = sr.convergence_verdict([2.0, 1.9, 1.85, 1.8, 1.83], [])  # final 1.8267 > 0.9 x 2.0 = 1.8
    assert len(flat) == 1 and "not below 0.9" in flat[0]
    assert sr.convergence_verdict([2.0, 1.9, 1.7, 1.8, 1.79], []) == []  # final 1.763 < 1.8
    assert sr.convergence_verdict([2.0], []) != []  # one logged value: no fall
    assert sr.convergence_verdict([2.0, float("nan"), 1.0], []) == ["the loss curve has a non-finite value"]
    # (b) an outlier among >= 3 seeds: others' median 0.81, MAD 0.01 floored to 0.05: threshold 0.96
    assert sr.convergence_verdict([2.5, 1.5, 0.95, 0.95, 0.95], [0.80, 0.82]) == []
    out = sr.convergence_verdict([2.5, 1.5, 0.97, 0.97, 0.97], [0.80, 0.82])
    assert len(out) == 1 and "MAD 0.050" in out[0]
    # a MAD above the floor: others [0.5, 0.8, 1.1] -> median 0.8, MAD 0.3, threshold 1.7
    assert sr.convergence_verdict([3.0, 2.0, 1.69, 1.69, 1.69], [0.5, 0.8, 1.1]) == []
    assert sr.convergence_verdict([3.0, 2.0, 1.71, 1.71, 1.71], [0.5, 0.8, 1.1]) != []
    # fewer than 3 seeds: the outlier test does not apply
    assert sr.convergence_verdict([2.5, 1.5, 1.5, 1.5, 1.5], [0.8]) == []


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


def _row(system, size, seed, t, *, variant="default", status="done", error=None, reference=False):
    quality = {0: 0.0, 25: 0.55, 50: 0.82, 100: 0.93}[size] if not reference else (0.97 if system == GPT else 0.7)
    quality -= 0.04 * (system == QLORA) + (0.05 * size / 100 if t >= 1.0 else 0.0)  # forgetting at T=1
    quality = min(1.0, max(0.0, quality + 0.02 * (seed - 2)))
    latency = ({"ttft_p50": 0.4, "ttft_p90": 0.6, "e2e_p50": 2.0, "e2e_p90": 3.1} if system == GPT else
               {"ttft_p50": 0.05, "ttft_p90": 0.08, "e2e_p50": 3.8 if size == 0 else 1.1 + 0.01 * seed,
                "e2e_p90": 5.0 if size == 0 else 1.5})
    run_dir = None if status == "missing" else f"runs/sweep-demo/{system.replace(' ', '_')}/n{size:04d}-seed{seed}"
    row = {
        "cell": f"n{size:04d}-seed{seed}", "num_train_examples": size, "seed": seed, "prompt_variant": variant,
        "backend": "openai" if system == GPT else "hf", "model": system, "n_eval": 200, "failed": 0,
        "not_scorable": {}, "median_latency_s": latency["e2e_p50"], "mean_output_tokens": 44.0 if size == 0 else 21.0,
        "mean_input_tokens": 65.6, "train_wall_time_s": None if size == 0 else 30.0 * size / 25,
        "train_tokens_per_s": None, "train_machine": None, "trained_tokens": None, "estimated_billed_tokens": None,
        "eval_wall_time_s": 70.0, "eval_requests": 200, "eval_machine": None,
        "generations": f"{run_dir}/eval-{variant}/generations.jsonl" if run_dir else None,
        "training_cost_usd": 0.0 if size == 0 else 0.01 * size / 25,
        "cost_basis": "gpt-4.1-2025-04-14 token prices" if system == GPT else "cpu at $0.10/h",
        "cost_per_1k_requests_usd": 0.9 if system == GPT else 0.0097, "break_even_requests": None if system == GPT else 12,
        "system": system, "temperature": t, "status": status, "error": error, "run_dir": run_dir,
        "loss": _loss(system, size, seed) if size > 0 and status != "missing" else None,
        "latency": latency if status == "done" else None, "reference": reference,
        "format_ok": None, "answer_correct": None, "both": None,
    }
    if status == "done":
        row.update(format_ok=quality, answer_correct=quality * 0.9, both=quality * 0.85)
    return row


def sweep_rows() -> list[dict]:
    rows = []
    for system in (LORA, QLORA):
        for size in SIZES:
            for seed in SEEDS:
                for t in TEMPS:
                    if (system, size, seed) == (QLORA, 50, 2):
                        rows.append(_row(system, size, seed, t, status="failed", error=FAILED_ERROR))
                    elif (system, size, seed, t) == (LORA, 100, 3, 1.0):
                        rows.append(_row(system, size, seed, t, status="missing"))
                    else:
                        rows.append(_row(system, size, seed, t))
    for t in TEMPS:  # references: the untrained base with few-shot prompts (3 seeds) and a prompted bigger model
        for seed in SEEDS:
            rows.append(_row(LORA.replace("LoRA", "base"), 0, seed, t, variant="few_shot", reference=True))
        rows.append(_row(GPT, 0, 1, t, variant="few_shot", reference=True))
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
    html_path, md_path = sr.write_sweep_report(out, sweep_rows(), get_task("formatting"), COST_CTX, SOURCES)
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
    # section 3: Welch against the base's 3 seeds (beaten from 50 examples), one-sample against the prompted
    # model's single value (never beaten: 0.97)
    how = md.split("## How much data")[1].split("## Latency")[0]
    assert "| smollm2-135m LoRA, prompt default, T=0 | format_ok | smollm2-135m base, prompt few_shot, T=0 | " \
           "0.700 (n=3) | 50 | 0.820 (n=3) | Welch |" in how
    assert how.count("| not reached | – | one-sample | smallest ") == 12  # 4 curves x 3 metrics vs GPT
    assert how.count("| Welch |") == 12
    # section 6: both non-converged cells flagged, each by its rule
    conv = md.split("## Seeds and convergence")[1]
    assert "2 of 18 trained cells" in conv
    assert "not below 0.9 x first loss" in conv and "above the other seeds' median" in conv
    assert sr.CONVERGENCE_RULE in md
    # means over the seeds that finished, with n and what did not
    assert "(n=2; 1 failed)" in md and "(n=2; 1 missing)" in md
    assert "price table dated 2025-06" in md and SOURCES["command"] in md


def test_report_without_costs_and_one_seed(tmp_path):
    rows = [r for r in sweep_rows() if r["seed"] == 1 and r["temperature"] == 0.0]
    _, md_path = sr.write_sweep_report(tmp_path, rows, get_task("formatting"), None, SOURCES)
    md = md_path.read_text()
    assert "Costs were not computed" in md
    assert "Only one seed per point: no confidence band" in md
    assert "needs >= 2 seeds" in md
    assert "One temperature in this sweep" in md


def test_degenerate_sweeps_still_render(tmp_path):
    """All cells failed, no references, only references, no rows at all, a lower-is-better metric."""
    task = get_task("formatting")
    lower = Task(name="lengthy", metrics=(Metric("words", "output length", higher_is_better=False),),
                    prompt_variants=("default",), build_messages=task.build_messages, score=task.score)
    rows = sweep_rows()
    failed = [{**r, "status": "failed", "error": "boom", "format_ok": None, "answer_correct": None, "both": None}
              for r in rows if not r["reference"]]
    words = [{**r, "words": None if r["status"] != "done" else 40.0 - 0.2 * r["num_train_examples"] + r["seed"]}
             for r in rows]
    cases = {"all-failed": (failed, task), "no-references": ([r for r in rows if not r["reference"]], task),
             "only-references": ([r for r in rows if r["reference"]], task), "empty": ([], task),
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
    # reference (42) from 25 examples; equal means at 0 are not better
    assert "| smollm2-135m LoRA, prompt default, T=0 | words | smollm2-135m base, prompt few_shot, T=0 | " \
           "42.000 (n=3) | 25 | 37.000 (n=3) | Welch |" in md
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
