"""The migration report: does the local model match the OpenAI fine-tune?

Written by `ftscale report <migration folder>` (a sweep folder with `migration.json`, the marker
`ftscale migrate plan` writes) as `migration.md` and `migration-results.json`, beside the sweep's
own report. Read from the sweep's rows (ftscale.sweep.sweep_rows) and their generations, so every
number can be traced to a run directory and recomputed.

- Quality: per local system and training size, the headline metric against the captured fine-tune
  on the same eval items, paired per example (eval/noninferiority.py: an exact test for 0/1 scores,
  a betting test for graded ones), and the verdict (eval/migration_verdict.py: sizes tested from
  the largest down, the level shared across local systems).
- Agreement: the share of items whose answer agrees with the fine-tune's own (each agreement
  metric), with 95% intervals (Wilson for 0/1 agreements, a bootstrap for graded ones; seeds pooled).
- Latency and cost at the switch (eval/migration_costs.py): p50/p90 TTFT and end-to-end as measured,
  throughput, cost per 1,000 requests and per month at the traffic in `migration.json`, each local
  figure with the hardware it was measured on, the prices with their source and age.
- A verdict line per local system; the shadow sets replayed since (ftscale/migrate_shadow.py), each
  tested on its own; and the command that serves the chosen system (ftscale/migrate_serve.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.atomic import write_json, write_text
from ftscale.eval.agreement_evaluators import both_orders
from ftscale.eval.migration_costs import side
from ftscale.eval.migration_sections import to_markdown
from ftscale.eval.migration_verdict import decide, size_tests, verdict
from ftscale.eval.noninferiority import items_needed, smallest_margin
from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import mean_interval, per_example
from ftscale.migrate_shadow import results as shadow_results
from ftscale.sweep import sweep_rows

MARKER = "migration.json"


def is_migration(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


# --- the report --------------------------------------------------------------------------------------

def _agreement(rows: list[ResultRow], metrics: list[str]) -> dict[str, tuple[float, float, float, int]]:
    """metric -> (share, low, high, items) over the rows' items, seeds pooled (binary metrics: Wilson)."""
    out = {}
    judged = ("agree_judge_local_first", "agree_judge_captured_first")
    for m in [x for x in metrics if x not in judged] + (["agree_judge"] if set(judged) <= set(metrics) else []):
        if m == "agree_judge":  # the two orders' verdicts combined per item: at least as good as the fine-tune
            values = []
            for r in rows:
                first, second = (per_example(r.generations, j) for j in judged)
                values += [v for i in first if (v := both_orders(first[i], second.get(i))) is not None]
        else:
            values = [v for r in rows for v in per_example(r.generations, m).values() if v is not None]
        if values:
            out[m] = (*mean_interval(values), len(values))
    return out


def _system_rows(rows: list[ResultRow], system: str) -> list[ResultRow]:
    """A local system's done rows, its untrained base (system "<name> base") as size 0."""
    return [r for r in rows if r.status == "done" and r.system in (system, f"{system} base")]


def temperature_notes(marker: dict, local_rows: list[ResultRow]) -> list[str]:
    """Where the product's sampling and the local evaluation's differ, or the product's is unknown."""
    product = marker.get("product_temperature")
    local = sorted({r.temperature for r in local_rows if r.temperature is not None})
    shown = ", ".join(f"{t:g}" for t in local) or "n/a"
    if "product_temperature" in marker and product is None:
        return [f"The temperature the product used is unknown (stored completions do not record it): the local models "
                f"were evaluated at {shown}. State it with `ftscale migrate capture --temperature T` and plan again"]
    if product is not None and any(abs(t - product) > 1e-9 for t in local):
        return [f"The product answered at temperature {product:g}; the local models were evaluated at {shown}: the "
                "comparison is not like for like"]
    return []


def collect(folder: Path, marker: dict, rows: list[ResultRow], task) -> dict:
    higher = next((m.higher_is_better for m in task.metrics if m.name == marker["headline"]), True)
    agreement_metrics = [m.name for m in task.metrics if m.name.startswith("agree_") and not m.name.endswith(".unparsable")]
    ref_rows = [r for r in rows if r.system == marker["reference"] and r.status == "done"]
    reference = per_example(ref_rows[0].generations, marker["headline"]) if ref_rows else {}
    tests, mine = {}, {}
    for name in marker["systems"]:
        mine[name] = _system_rows(rows, name)
        by_size: dict[int, list[dict]] = {}
        for r in sorted(mine[name], key=lambda r: (r.num_train_examples, r.seed)):
            by_size.setdefault(r.num_train_examples, []).append(per_example(r.generations, marker["headline"]))
        tests[name] = size_tests(by_size, reference, marker["margin"], higher) if reference else []
    decisions = decide(tests)
    systems = []
    for name in marker["systems"]:
        v = verdict(name, tests[name], decisions[name], marker["margin"], marker["reference"], higher)
        sizes = sorted({r.num_train_examples for r in mine[name]})
        shown_n = v["smallest_n"] if v["smallest_n"] is not None else max(sizes, default=None)
        shown = [r for r in mine[name] if r.num_train_examples == shown_n]
        tested = set(decisions[name]["passed"]) | {decisions[name]["stopped_at"]}
        for t in tests[name]:
            t["tested"], t["passed"] = t["n"] in tested, t["n"] in decisions[name]["passed"]
        systems.append({"name": name, "tests": tests[name], "decision": decisions[name], "verdict": v,
                        "shown_n": shown_n, "agreement": _agreement(shown, agreement_metrics),
                        "side": side(shown, marker["monthly_requests"])})
    seeds = max((t.get("n_seeds", 1) for ts in tests.values() for t in ts), default=1)
    return {"marker": marker, "headline": marker["headline"], "higher_is_better": higher,
            "reference": {"name": marker["reference"], "side": side(ref_rows, marker["monthly_requests"]),
                          "n_items": len(reference), "showable_margin": smallest_margin(len(reference), seeds),
                          "items_needed": items_needed(marker["margin"], seeds)},
            "temperature_notes": temperature_notes(marker, [r for rs in mine.values() for r in rs]),
            "folder": str(folder), "shadow": shadow_results(folder),
            "systems": systems, "not_done": [f"{r.system} n={r.num_train_examples} seed={r.seed}: "
                                             f"{r.status} {r.error.splitlines()[0] if r.error else ''}"
                                             for r in rows if r.status != "done"]}


def write_migration_report(folder: Path) -> Path:
    folder = Path(folder)
    marker = json.loads((folder / MARKER).read_text())
    results = sweep_rows(folder)
    res = collect(folder, marker, results.rows, results.task)
    write_json(folder / "migration-results.json", res)
    return write_text(folder / "migration.md", to_markdown(res, results.cost))
