"""The sections of the sweep report, each written into the report's document in the order a reader meets them
(the how-much-data section has its own module)."""

from __future__ import annotations

import datetime as _dt
import statistics
from collections import Counter
from pathlib import Path

from ftscale.eval.convergence import CONVERGENCE_RULE, convergence_table
from ftscale.eval.pairwise_runs import describe, pooled, rate_text, read_comparisons
from ftscale.eval.report import usd
from ftscale.eval.report_document import Doc, TableCell, fmt
from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import CONFIDENCE
from ftscale.eval.sweep_plots import png_name, scaling_png
from ftscale.eval.sweep_rows import (NOT_DONE, SweepView, by_size, group, is_done, mark, mean_cell, nothing_cell,
                                     numbers, problem_text, problems, sort_key, values)


def title_section(doc: Doc, view: SweepView, sources: dict) -> None:
    """The title, the task and its metrics, where the sweep is, and what its rows span."""
    task, rows = view.task, view.rows
    doc.h1(view.title)
    doc.p(f"Task `{task.name}`. Metrics: " + "; ".join(
        f"`{m.name}` ({'higher' if m.higher_is_better else 'lower'} is better): {m.description}" for m in task.metrics)
          + "".join(f"; `{p}` (higher is better): the general-ability probes' {p.removeprefix('probes.')}, asked as "
                    "written at the same temperature" for p in view.probes) + ".")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    doc.p(f"Generated {now}. Sweep directory `{view.sweep_dir}`; results store `{sources.get('store') or '–'}`.")
    doc.p("Command that made the sweep:")
    doc.code(sources.get("command") or "(not recorded)")
    sizes = sorted({r.num_train_examples for r in rows}, key=sort_key)
    seeds = sorted({r.seed for r in rows}, key=sort_key)
    variants = sorted({r.prompt_variant for r in rows}, key=sort_key)
    doc.p(f"{len(rows)} rows, one per evaluated cell (system x training size x seed) x prompt variant x temperature. "
          f"Systems: {', '.join(sorted({r.system for r in rows})) or '–'}. Training sizes: "
          f"{', '.join(fmt(s) for s in sizes) or '–'}. Seeds: {', '.join(fmt(s) for s in seeds) or '–'}. "
          f"Temperatures: {', '.join(fmt(t, 'g') for t in view.temps) or '–'}. Prompt variants: "
          f"{', '.join(str(v) for v in variants) or '–'}. "
          "Reference rows (drawn as horizontal lines): "
          f"{', '.join(view.label(k) for k in view.refs) or 'none'}.")


def summary_section(doc: Doc, view: SweepView) -> None:
    """Rows by status per system, and every row that is not done with its error."""
    rows = view.rows
    doc.h2("Summary", "summary")
    statuses = list(("done",) + NOT_DONE) + sorted({r.status for r in rows} - {"done", *NOT_DONE})

    def counts(grp: list[ResultRow]) -> list[TableCell]:
        c = Counter(r.status for r in grp)
        return [TableCell(str(c[s]), s if c[s] and s != "done" else None) for s in statuses]

    status_rows = [[system, *counts(grp), str(len(grp))]
                   for (system,), grp in group(rows, lambda r: (r.system,)).items()]
    status_rows.append(["all", *counts(rows), str(len(rows))])
    doc.table(["system", *statuses, "rows"], status_rows, "table: status summary", rows)
    bad = [r for r in rows if not is_done(r)]
    if bad:
        doc.p(f"Rows not done ({len(bad)}): each is left out of every mean below, and counted next to it.")
        doc.table(["system", "train examples", "seed", "prompt", "temperature", "status", "error", "run directory"],
                  [[r.system, fmt(r.num_train_examples), fmt(r.seed), fmt(r.prompt_variant),
                    fmt(r.temperature, "g"),
                    TableCell(r.status, r.status if r.status in NOT_DONE else "flag"),
                    r.error or "–", r.run_dir or "–"]
                   for r in sorted(bad, key=lambda r: sort_key((r.system, r.num_train_examples, r.seed,
                                                                r.prompt_variant, r.temperature)))],
                  "table: rows not done", bad)
    elif rows:
        doc.p(f"All {len(rows)} rows are done.")
    else:
        doc.p("No rows: the sweep has no evaluated cell yet.")


def scaling_section(doc: Doc, view: SweepView) -> None:
    """A figure and a table per metric."""
    curves, refs = view.curves, view.refs
    doc.h2("Scaling curves", "scaling")
    max_seeds = max((len(values(g, m)) for rs in curves.values() for g in by_size(rs).values()
                     for m in view.metric_order), default=0)
    doc.p(f"One line per (system, prompt variant{', temperature' if view.many_t else ''}): the mean over seeds at "
          f"each training size, shaded: the {int(CONFIDENCE * 100)}% Student t interval on the seed values, "
          "mean +- t(0.975, n-1) x s / sqrt(n). Dashed horizontal lines: reference rows (their mean over seeds). "
          "Means are over the seeds that finished; a point with fewer is labelled n=finished/planned."
          + (" Only one seed per point: no confidence band is drawn." if max_seeds <= 1 else
             " A point with one finished seed has no band."))
    sizes = view.curve_sizes
    for metric in view.metric_order:
        higher = view.directions[metric]
        doc.h3(f"{metric} ({'higher' if higher else 'lower'} is better)")
        name = png_name(metric)
        doc.img(name, f"{metric} against training examples", scaling_png(curves, refs, metric, higher, view.label),
                view.rows)
        table_rows = []
        for key, rs in curves.items():
            sized = by_size(rs)
            table_rows.append([view.label(key), TableCell(""),
                               *(mean_cell(sized[s], metric, interval=True) if s in sized else TableCell("–")
                                 for s in sizes)])
        for key, rs in refs.items():
            table_rows.append([f"reference: {view.label(key)}", mean_cell(rs, metric, interval=True),
                               *([TableCell("")] * len(sizes))])
        single = [f"{view.label(k)} at {s}" for k, rs in curves.items()
                  for s, g in by_size(rs).items() if len(values(g, metric)) == 1]
        doc.table(["system / train examples", "reference", *(str(s) for s in sizes)], table_rows,
                  f"table: {metric} by training size", view.rows)
        doc.p("Cells: mean [95% t interval] (n = finished seeds; what did not finish). References: mean over their "
              "rows, in the reference column." + (f" One seed only (no interval): {'; '.join(single)}." if single else ""))


def _median_latency(grp: list[ResultRow], of) -> float | None:
    """The median over the measured rows of a group of one latency figure, of(latency); None without one."""
    v = [x for r in grp if (lat := r.measured_latency) is not None and (x := of(lat)) is not None]
    return statistics.median(v) if v else None


def _e2e_p50(lat):
    return lat.e2e_s.p50


def _base_rows(view: SweepView, system: str, t) -> list[ResultRow]:
    """The system's untrained base with the default prompt, at temperature t (at any, if not evaluated at t)."""
    cand = [r for r in view.rows if r.system == system and r.num_train_examples == 0
            and r.prompt_variant == view.default_variant]
    same = [r for r in cand if r.temperature == t]
    return same or cand


def _by_setting(rows: list[ResultRow]) -> dict[tuple, list[ResultRow]]:
    """Rows by (system, prompt variant, temperature, training size, is a reference)."""
    return group(rows, lambda r: (r.system, r.prompt_variant, r.temperature, r.num_train_examples, r.is_reference))


def latency_section(doc: Doc, view: SweepView) -> None:
    doc.h2("Latency", "latency")
    doc.p("Per system, prompt variant, temperature and training size: the median over seeds of each row's time to "
          "first token (TTFT) and end-to-end (e2e) latency percentiles, in seconds. Speed-up: the e2e p50 of the "
          f"comparison divided by this row's e2e p50 (above 1: this one is faster); 'base' is the same system's "
          f"untrained base (0 examples) with the `{view.default_variant}` prompt at the same temperature (any, if not "
          "evaluated at it). Mean output tokens: the mean over seeds of each row's mean.")
    ref_pairs = {}  # (system, variant) of a reference -> its lines
    for rkey in view.refs:
        ref_pairs.setdefault(rkey[:2], []).append(rkey)
    lat_rows = []
    for (system, variant, t, size, is_ref), grp in _by_setting(view.rows).items():
        e2e = _median_latency(grp, _e2e_p50)
        n = sum(1 for r in grp if r.measured_latency is not None)
        probs = problems(grp)
        base = _median_latency(_base_rows(view, system, t), _e2e_p50)
        speed = [TableCell(f"{base / e2e:.2f}x") if base and e2e else TableCell("–")]
        for keys in ref_pairs.values():
            same = [k for k in keys if k[2] == t] or keys
            ref_e2e = _median_latency([r for k in same for r in view.refs[k]], _e2e_p50)
            speed.append(TableCell(f"{ref_e2e / e2e:.2f}x") if ref_e2e and e2e else TableCell("–"))
        tokens = numbers(grp, lambda r: r.mean_output_tokens)
        n_cell = TableCell(f"{n}" + (f" ({problem_text(probs)})" if probs else ""),
                           None if not probs else ("partial" if n else mark(probs)))
        lat_rows.append([system + (" (reference)" if is_ref else ""), fmt(variant), fmt(t, "g"), fmt(size), n_cell,
                         fmt(_median_latency(grp, lambda lat: lat.ttft_s and lat.ttft_s.p50)),
                         fmt(_median_latency(grp, lambda lat: lat.ttft_s and lat.ttft_s.p90)), fmt(e2e),
                         fmt(_median_latency(grp, lambda lat: lat.e2e_s.p90)), *speed,
                         fmt(statistics.fmean(tokens), ".1f") if tokens else "–"])
    doc.table(["system", "prompt", "T", "train examples", "n", "TTFT p50 (s)", "TTFT p90 (s)", "e2e p50 (s)",
               "e2e p90 (s)", "speed-up vs base", *(f"speed-up vs {s}, prompt {v}" for s, v in ref_pairs),
               "mean output tokens"], lat_rows, "table: latency", view.rows)


def parity_section(doc: Doc, view: SweepView) -> None:
    """Each adapter (and the base) evaluated both in-process and through vLLM, on the same items: how many greedy
    answers are identical and what serving changes the headline metric by (eval/parity.py). Only in a sweep
    evaluated both ways (`eval_backend: [hf, vllm]`)."""
    by_eval = group([r for r in view.rows if is_done(r) and r.backend in ("hf", "vllm")],
                    lambda r: (r.run_dir, r.prompt_variant, r.temperature))
    from ftscale.eval.parity import THRESHOLD_NOTE, compare, verdict

    both = [(sorted(g, key=lambda r: r.backend)) for g in by_eval.values() if {r.backend for r in g} == {"hf", "vllm"}]
    # a QLoRA cell's two evaluations are not of the same weights (4-bit base in-process, bf16 base on vLLM)
    quantized = sorted({hf.system.removesuffix(" (hf)") for hf, _ in both if hf.quantization == "4bit"})
    pairs = [(hf, served) for hf, served in both if hf.quantization != "4bit"]
    if not pairs:
        return

    metric = view.headline[0]
    doc.h2("Train/serve parity", "parity")
    doc.p("The same weights answered in-process (transformers, `hf`) and through a vLLM server, on the same eval "
          "items: the share of answers identical character for character (95% Wilson interval), and the paired "
          f"difference of `{metric}`, vLLM minus in-process (95% interval). " + THRESHOLD_NOTE
          + (f" Not in this table: {', '.join(quantized)}, whose in-process answers come from the 4-bit base and vLLM's "
             "from the bf16 base (vLLM on a CPU has no bitsandbytes), so quantization and the engine both differ "
             "between them; the QLoRA experiment measures each apart (docs/qlora.md)." if quantized else ""))
    cache, table = {}, []
    for hf, served in pairs:
        found = hf.generations and served.generations and all(
            Path(g).is_file() for g in (hf.generations, served.generations))
        p = compare(served.generations, hf.generations, metric, cache) if found else None
        table.append([hf.system.removesuffix(" (hf)"), fmt(hf.num_train_examples), fmt(hf.seed), fmt(hf.prompt_variant),
                      fmt(hf.temperature, "g"), p.identical_text() if p else "– (generations not at hand)",
                      p.difference_text() if p else "–",
                      TableCell(verdict(p), "flag" if p.flagged else None) if p else "–"])
    doc.table(["system", "train examples", "seed", "prompt", "T", "identical answers [95% CI]",
               f"{metric}: vLLM − in-process [95% CI]", "verdict"], table, "table: train/serve parity",
              [r for pair in pairs for r in pair])


def _usd_mean_cell(grp: list[ResultRow], of) -> TableCell:
    v = numbers(grp, of)
    probs = problems(grp)
    if not v:
        return nothing_cell(probs)
    return TableCell(f"{usd(statistics.fmean(v))} (n={len(v)}" + (f"; {problem_text(probs)})" if probs else ")"),
                     "partial" if probs else None)


def _break_even_cell(grp: list[ResultRow]) -> TableCell:
    """Each seed's break-even, in seed order (a row that is not done: its status)."""
    be = []
    for r in sorted(grp, key=lambda r: sort_key(r.seed)):
        if not is_done(r):
            be.append(r.status)
        else:
            v = r.break_even_requests
            be.append("–" if v is None else (f"{v:,}" if isinstance(v, int) else str(v)))
    return TableCell(" / ".join(be), "partial" if any(b in NOT_DONE for b in be) else None)


def cost_section(doc: Doc, view: SweepView, cost_ctx: dict | None) -> None:
    doc.h2("Cost", "cost")
    if cost_ctx is None:
        doc.p("Costs were not computed for this sweep (no price table context was given).")
        return
    ref_cost = cost_ctx.get("reference_cost_per_1k_requests_usd")
    note = cost_ctx.get("prices_note") or f"Prices: `{cost_ctx.get('prices_file', '–')}`."
    doc.p(f"{note} Amounts in {cost_ctx.get('currency', 'USD')} (price table dated {cost_ctx.get('prices_checked', '–')}"
          f"). Reference: prompting `{cost_ctx.get('reference_model', '–')}` "
          f"with the `{cost_ctx.get('reference_variant', '–')}` prompt, ${usd(ref_cost)} per 1,000 requests "
          f"({cost_ctx.get('reference_basis', '–')}). Training cost and cost per 1,000 requests: the mean over "
          "the seeds that have them (n); break-even (the number of requests after which training plus serving "
          "costs less than prompting the reference): each seed's value, in seed order.")
    cost_rows = []
    for (system, variant, t, size, is_ref), grp in _by_setting(view.rows).items():
        basis = sorted({r.cost_basis for r in grp if r.cost_basis})
        cost_rows.append([system + (" (reference)" if is_ref else ""), fmt(variant), fmt(t, "g"), fmt(size),
                          _usd_mean_cell(grp, lambda r: r.training_cost_usd),
                          _usd_mean_cell(grp, lambda r: r.cost_per_1k_requests_usd),
                          _break_even_cell(grp), "; ".join(basis) or "–"])
    doc.table(["system", "prompt", "T", "train examples", "training cost ($)", "per 1,000 requests ($)",
               "break-even (requests, per seed)", "priced as"], cost_rows, "table: cost", view.rows)


def seeds_section(doc: Doc, view: SweepView) -> None:
    """The spread of each headline metric across seeds, and which trained cells did not converge."""
    rows = view.rows
    doc.h2("Seeds and convergence", "seeds")
    doc.p("Spread across seeds: the sample standard deviation (n-1) of each headline metric over the seeds that "
          "finished, per system, prompt variant, temperature and training size (n in brackets; '–' with one seed).")
    sd_rows = []
    for key, rs in view.curves.items():
        for size, grp in by_size(rs).items():
            cells = []
            for metric in view.headline:
                v = values(grp, metric)
                probs = problems(grp, metric)
                txt = (f"{statistics.stdev(v):.3f}" if len(v) >= 2 else "–") + f" (n={len(v)}" + (
                    f"; {problem_text(probs)})" if probs else ")")
                cells.append(TableCell(txt, ("partial" if v else mark(probs)) if probs else None))
            sd_rows.append([view.label(key), fmt(size), *cells])
    doc.table(["system", "train examples", *(f"sd of {m}" for m in view.headline)], sd_rows, "table: seed spread",
              [r for rs in view.curves.values() for r in rs])
    doc.p("Convergence rule: " + CONVERGENCE_RULE)
    conv = convergence_table(rows)
    if conv:
        flagged = [c for c in conv if not c["converged"]]
        doc.p(f"{len(flagged)} of {len(conv)} trained cells with a loss curve did not converge"
              + (": " + "; ".join(f"{c['system']} n={c['num_train_examples']} seed {c['seed']}" for c in flagged)
                 if flagged else "") + ".")
        doc.table(["system", "train examples", "seed", "logged steps", "first loss", "final loss (mean of last 3)",
                   "other seeds", "verdict"],
                  [[c["system"], fmt(c["num_train_examples"]), fmt(c["seed"]), str(c["n_logged"]), fmt(c["first"]),
                    fmt(c["final"]), str(c["n_other_seeds"]),
                    TableCell("converged") if c["converged"]
                    else TableCell("did not converge: " + "; ".join(c["reasons"]), "flag")]
                   for c in conv], "table: convergence",
                  [r for r in rows if not r.is_reference and r.loss])
    with_loss = {(r.system, r.num_train_examples, r.seed) for r in rows if r.loss}
    trained_no_loss = sorted({(r.system, r.num_train_examples, r.seed) for r in rows
                              if not r.is_reference and r.num_train_examples > 0} - with_loss,
                             key=sort_key)
    if trained_no_loss:
        doc.p("Trained cells without a loss curve (convergence not judged): " + "; ".join(
            f"{s} n={n} seed {sd}" for s, n, sd in trained_no_loss) + ".")
    if not conv and not trained_no_loss:
        doc.p("No trained cells with a loss curve in this sweep.")


def temperature_section(doc: Doc, view: SweepView) -> None:
    """Each headline metric by training size and temperature, and its change from the lowest to the highest."""
    temps = view.temps
    doc.h2("Temperature", "temperature")
    if not view.many_t:
        doc.p(f"One temperature in this sweep ({', '.join(fmt(t, 'g') for t in temps)}): no per-temperature table.")
        return
    lo_t, hi_t = fmt(temps[0], "g"), fmt(temps[-1], "g")
    doc.p("Each headline metric by training size and sampling temperature: mean over finished seeds (n). "
          f"Change: the mean at T={hi_t} minus the mean at T={lo_t}; a fall that grows "
          "with training size is forgetting at higher temperatures.")
    by_sv = group(view.rows, lambda r: (r.system, r.prompt_variant, r.is_reference))
    for metric in view.headline:
        doc.h3(f"{metric} by temperature ({'higher' if view.directions[metric] else 'lower'} is better)")
        t_rows = []
        for (system, variant, is_ref), grp in by_sv.items():
            for size, g2 in by_size(grp).items():
                by_t = group(g2, lambda r: (r.temperature,))
                cells = [mean_cell(by_t[(t,)], metric) if (t,) in by_t else TableCell("–") for t in temps]
                lo_v = values(by_t.get((temps[0],), []), metric)
                hi_v = values(by_t.get((temps[-1],), []), metric)
                change = f"{statistics.fmean(hi_v) - statistics.fmean(lo_v):+.3f}" if lo_v and hi_v else "–"
                t_rows.append([system + (" (reference)" if is_ref else ""), fmt(variant), fmt(size), *cells, change])
        doc.table(["system", "prompt", "train examples", *(f"T={fmt(t, 'g')}" for t in temps),
                   f"change T={lo_t} to T={hi_t}"], t_rows, f"table: {metric} by temperature", view.rows)


def pairwise_section(doc: Doc, out_dir: Path) -> None:
    """The double-blind pairwise judgements in out_dir (only when there are any)."""
    found, stale = read_comparisons(out_dir)
    if not (found or stale):
        return
    doc.h2("Double-blind pairwise judgements", "pairwise")
    if found:
        doc.p(describe(found))
        doc.table(["system", "against", "temperature", "comparisons (seeds)", "pairs judged", "win [95% CI]",
                   "tie [95% CI]", "loss [95% CI]", "unparsable", "failed"],
                  [[r["x"], r["y"], fmt(r["temperature"], "g"), str(r["comparisons"]), str(r["n"]),
                    rate_text(r, "win"), rate_text(r, "tie"), rate_text(r, "loss"),
                    TableCell(str(r["unparsable"]), "flag" if r["unparsable"] else None), str(r["failed"])]
                   for r in pooled(found)])
    if stale:
        doc.p(f"Stale judgements left out (a side was evaluated again since; `ftscale sweep` judges them again): "
              f"{', '.join(stale)}.")


def sources_section(doc: Doc, view: SweepView, sources: dict) -> None:
    """The command, the run directories (numbered), and which of them each figure and table was made from."""
    rows = view.rows
    doc.h2("Sources", "sources")
    doc.p("Command that made the sweep:")
    doc.code(sources.get("command") or "(not recorded)")
    run_dirs = sorted({r.run_dir for r in rows if r.run_dir})
    ids = {d: f"R{i + 1}" for i, d in enumerate(run_dirs)}
    status_of = {}
    for r in rows:
        if r.run_dir:
            status_of.setdefault(r.run_dir, Counter())[r.status] += 1
    doc.p(f"Run directories (sweep directory `{view.sweep_dir}`, results store `{sources.get('store') or '–'}`); a "
          "directory holds one trained or evaluated cell, and a row's generations, scores and loss curve are in it:")
    doc.table(["id", "run directory", "rows (status)"],
              [[ids[d], d, TableCell(problem_text(status_of[d]), None if set(status_of[d]) == {"done"} else "partial")]
               for d in run_dirs],
              None)
    no_dir = [r for r in rows if not r.run_dir]
    if no_dir:
        doc.p(f"Rows without a run directory ({len(no_dir)}): " + "; ".join(
            f"{r.system} n={fmt(r.num_train_examples)} seed {fmt(r.seed)} "
            f"prompt {fmt(r.prompt_variant)} T={fmt(r.temperature, 'g')} ({r.status})"
            for r in no_dir) + ".")
    src_rows = []
    for name, used in doc.sources:
        dirs = sorted({ids[r.run_dir] for r in used if r.run_dir}, key=lambda s: int(s[1:]))
        src_rows.append([name, _id_ranges(dirs) or "–", str(sum(1 for r in used if not r.run_dir))])
    doc.table(["figure / table", "made from run directories", "rows without a directory"], src_rows)


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
