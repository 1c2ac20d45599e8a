"""The sweep report's how-much-data section: for each fine-tuned curve, metric and reference, the smallest
training size that beats the reference, by a paired comparison on the same eval items."""

from __future__ import annotations

import statistics

from ftscale.eval.report_document import Doc, TableCell, fmt
from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import ALPHA, align, beats, holm, item_scores, p_text, paired_difference
from ftscale.eval.sweep_rows import SweepView, by_size, is_done, nothing_cell, problem_text, problems, values

LOCAL = {"hf", "vllm"}  # the backends a local model answers through; a reference of none of them is remote
HOW_MUCH_RULE = (
    "For each fine-tuned system, metric and reference: the smallest training size at which the fine-tune is "
    "better than the reference with confidence. Both are scored on the same eval items, so each size is compared "
    "with the reference item by item (paired), with the reference's own sampling noise counted: a cell is the "
    "fine-tune minus the reference (its mean over items and seeds), its 95% paired bootstrap interval (items "
    "resampled, and each side's seeds as a second level), and the two-sided p-value, Holm-adjusted across the "
    "sizes of that row. With one seed a side and 0/1 scores the p-value is McNemar's exact test. A failed request "
    "counts as 0, as in the means; items one side could not score are left out of both. A size beats the "
    f"reference when its Holm-adjusted p is below {ALPHA:g} and its interval lies wholly on the better side of 0 "
    "(above when higher is better, below when lower is better). The bootstrap draws 2,000 replicates, so its p is "
    "never below 2/2,001 before the adjustment. Each curve is compared with each reference at "
    "its own temperature, or at the reference's temperatures when the reference was not evaluated at it. A local "
    "reference (the untrained base) is compared only with the curves answered by the same backend (in-process or "
    "vLLM); a prompted or captured remote model, with every curve.")


def how_much_data_section(doc: Doc, view: SweepView) -> None:
    doc.h2("How much data", "how-much-data")
    doc.p(HOW_MUCH_RULE)
    sizes = view.curve_sizes
    hm_rows, scores = [], {}
    for key, rs in view.curves.items():
        sized = by_size(rs)
        for metric in view.metric_order:
            for rkey in _references_for(key[2], _same_backend(rs, view.refs)):
                hm_rows.append([view.label(key), metric, view.label(rkey),
                                *_how_much(sized, view.refs[rkey], metric, view.directions[metric], sizes, scores)])
    if hm_rows:
        doc.table(["fine-tuned system", "metric", "reference", "reference mean", "smallest size that beats it",
                   *(f"{fmt(s)} examples: difference [95% CI], Holm p" for s in sizes)],
                  hm_rows, "table: how much data", view.rows)
    else:
        doc.p("No reference rows or no fine-tuned systems in this sweep: nothing to compare.")


def _same_backend(curve: list[ResultRow], refs: dict[tuple, list[ResultRow]]) -> dict[tuple, list[ResultRow]]:
    """The references a curve is compared with: remote models, and local ones answered by the curve's backend
    (a sweep evaluated both in-process and through vLLM compares like with like)."""
    backends = {r.backend for r in curve} & LOCAL
    if not backends:  # nothing of the curve finished (or it is remote): every reference, as before
        return refs
    return {k: rs for k, rs in refs.items() if not {r.backend for r in rs} & LOCAL or {r.backend for r in rs} & backends}


def _references_for(curve_t, refs: dict[tuple, list[ResultRow]]) -> list[tuple]:
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


def _item_scores(rows: list[ResultRow], metric: str, cache: dict) -> list[dict]:
    """The per-example scores of the finished rows that have them, one map per seed (a probe metric has none
    in the evaluation's own generations)."""
    return [m for m in (item_scores(r.generations, metric, cache) for r in rows if is_done(r)) if m]


def _how_much(sized: dict, ref_rows: list[ResultRow], metric: str, higher: bool, sizes: list, cache: dict) -> list:
    """The cells of one (curve, metric, reference) row of the how-much-data table: reference mean, the
    smallest size that beats it, and one paired comparison per size, Holm-adjusted across the sizes."""
    ref_vals = values(ref_rows, metric)
    ref_maps = _item_scores(ref_rows, metric, cache)
    if not ref_vals or not ref_maps:
        why = "no value" if not ref_vals else "no per-example scores"
        return [TableCell(why, "missing"), "–", *(TableCell("–") for _ in sizes)]
    tested = {}
    for size, grp in sized.items():
        maps = _item_scores(grp, metric, cache)
        a, b, ids, dropped = align(maps, ref_maps)
        if ids:
            tested[size] = (paired_difference(a, b), dropped)
    adjusted = dict(zip(tested, holm([d.p_value for d, _ in tested.values()])))
    winners = [s for s in tested if beats(tested[s][0], adjusted[s], higher)]
    smallest = winners[0] if winners else None
    cells = []
    for size in sizes:
        grp = sized.get(size, [])
        probs = problems(grp, metric)
        if size not in tested:
            cells.append(nothing_cell(probs) if probs else TableCell("no per-example scores" if grp else "–",
                                                                     "missing" if grp else None))
            continue
        d, dropped = tested[size]
        text = (f"{d.text()}, p={p_text(adjusted[size])}" + (" (beats)" if size in winners else "")
                + f" ({d.n_seeds_a} vs {d.n_seeds_b} seeds, {d.n_items} items"
                + (f", {dropped} unshared left out" if dropped else "")
                + (f"; {problem_text(probs)})" if probs else ")"))
        cells.append(TableCell(text, "partial" if probs else None))
    ref_text = f"{statistics.fmean(ref_vals):.3f} (n={len(ref_vals)})"
    return [ref_text, TableCell(fmt(smallest)) if smallest is not None else TableCell("not reached", "flag"), *cells]
