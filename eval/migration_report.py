"""The migration report: does the local model match the OpenAI fine-tune?

Written by `ftscale report <migration folder>` (a sweep folder with `migration.json`, the marker
`ftscale migrate plan` writes) as `migration.md` and `migration-results.json`, beside the sweep's
own report. Read from the sweep's rows (ftscale.sweep.sweep_rows) and their generations, so every
number can be traced to a run directory and recomputed.

- Quality: per local system and training size, the headline metric against the captured fine-tune
  on the same eval items, paired per example (seeds pooled by the paired test); the smallest size
  that is non-inferior: the lower bound of the 95% interval of (local - fine-tune) above -margin.
- Agreement: the share of items whose answer agrees with the fine-tune's own (each agreement
  metric), with 95% Wilson intervals (seeds pooled).
- Latency: p50/p90 TTFT and end-to-end, as measured (the fine-tune's at capture time, at OpenAI).
- Cost per 1,000 requests, and per month at the traffic in `migration.json`.
- A verdict line per local system.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.atomic import write_json, write_text
from ftscale.eval.agreement_evaluators import both_orders
from ftscale.eval.report_document import fmt
from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import noninferiority, per_example, wilson
from ftscale.sweep import sweep_rows

MARKER = "migration.json"


def is_migration(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


# --- per-example scores (ftscale.eval.stats.per_example: a failed request 0, an unscorable item left out) ---

def paired_lists(local_by_seed: list[dict], reference: dict) -> tuple[list[list[float]], list[list[float]], int]:
    """(local scores per seed, reference scores) over the items every side scored, in one order."""
    ids = [i for i in reference if all(i in s for s in local_by_seed)]
    return [[s[i] for i in ids] for s in local_by_seed], [[reference[i] for i in ids]], len(ids)


# --- the verdict ----------------------------------------------------------------------------------

def size_tests(local: dict[int, list[dict]], reference: dict, margin: float, higher_is_better: bool = True) -> list[dict]:
    """One non-inferiority test per training size: `local` maps size -> per-seed {id: score}."""
    out = []
    for n in sorted(local):
        a, b, n_items = paired_lists(local[n], reference)
        if n_items == 0:
            out.append({"n": n, "n_items": 0, "noninferior": False, "diff": None, "low": None, "high": None,
                        "method": "no item scored on both sides"})
            continue
        d, ok = noninferiority(a, b, margin, higher_is_better=higher_is_better)
        out.append({"n": n, "n_items": n_items, "n_seeds": len(a), "noninferior": bool(ok), "diff": d.diff,
                    "low": d.low, "high": d.high, "p_value": d.p_value, "method": d.method,
                    "local_mean": sum(map(sum, a)) / (len(a) * n_items), "reference_mean": sum(b[0]) / n_items})
    return out


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def verdict(system: str, tests: list[dict], margin: float, reference: str, higher_is_better: bool = True) -> dict:
    """The smallest non-inferior size and the one line that says it; "not yet" when none is."""
    passing = [t for t in tests if t["noninferior"]]
    if passing:
        t = passing[0]
        return {"system": system, "smallest_n": t["n"], "test": t,
                "line": (f"{system}: YES, matches {reference} from n={t['n']} training examples: difference "
                         f"{_signed(t['diff'])} (95% CI {_signed(t['low'])} to {_signed(t['high'])}) is above "
                         f"-{margin} on {t['n_items']} paired items")}
    scored = [t for t in tests if t["n_items"]]
    if not scored:
        return {"system": system, "smallest_n": None, "test": None,
                "line": f"{system}: no verdict: no evaluation of it and {reference} scored the same items"}
    t = scored[-1]
    worse = (t["high"] < -margin) if higher_is_better else (t["low"] > margin)
    why = ("clearly worse" if worse else f"not shown within the margin ({t['n_items']} items; more eval prompts "
                                         "narrow the interval)")
    return {"system": system, "smallest_n": None, "test": t,
            "line": (f"{system}: not yet: add data or a larger model. At its largest size n={t['n']} the difference "
                     f"is {_signed(t['diff'])} (95% CI {_signed(t['low'])} to {_signed(t['high'])}), {why}; "
                     f"margin {margin}")}


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
            k = sum(values)
            low, high = wilson(round(k), len(values)) if all(v in (0.0, 1.0) for v in values) else (None, None)
            out[m] = (k / len(values), low, high, len(values))
    return out


def _na(x, spec: str = ".3f") -> str:
    return fmt(x, spec, missing="n/a")


def _seconds(x) -> str:
    return _na(x) + ("" if x is None else " s")


def _system_rows(rows: list[ResultRow], system: str) -> list[ResultRow]:
    """A local system's done rows, its untrained base (system "<name> base") as size 0."""
    return [r for r in rows if r.status == "done" and r.system in (system, f"{system} base")]


def collect(folder: Path, marker: dict, rows: list[ResultRow], task) -> dict:
    higher = next((m.higher_is_better for m in task.metrics if m.name == marker["headline"]), True)
    agreement_metrics = [m.name for m in task.metrics if m.name.startswith("agree_") and not m.name.endswith(".unparsable")]
    ref_rows = [r for r in rows if r.system == marker["reference"] and r.status == "done"]
    reference = per_example(ref_rows[0].generations, marker["headline"]) if ref_rows else {}
    systems = []
    for name in marker["systems"]:
        mine = _system_rows(rows, name)
        by_size: dict[int, list[dict]] = {}
        for r in sorted(mine, key=lambda r: (r.num_train_examples, r.seed)):
            by_size.setdefault(r.num_train_examples, []).append(per_example(r.generations, marker["headline"]))
        tests = size_tests(by_size, reference, marker["margin"], higher) if reference else []
        v = verdict(name, tests, marker["margin"], marker["reference"], higher)
        shown_n = v["smallest_n"] if v["smallest_n"] is not None else max(by_size, default=None)
        shown = [r for r in mine if r.num_train_examples == shown_n]
        systems.append({"name": name, "tests": tests, "verdict": v, "shown_n": shown_n,
                        "agreement": _agreement(shown, agreement_metrics), "side": _side(shown, marker)})
    return {"marker": marker, "headline": marker["headline"], "higher_is_better": higher,
            "reference": {"name": marker["reference"], "side": _side(ref_rows, marker), "n_items": len(reference)},
            "systems": systems, "not_done": [f"{r.system} n={r.num_train_examples} seed={r.seed}: "
                                             f"{r.status} {r.error.splitlines()[0] if r.error else ''}"
                                             for r in rows if r.status != "done"]}


def _side(rows: list[ResultRow], marker: dict) -> dict:
    """Latency and cost of one system at one size (seeds: the first finished one's figures)."""
    if not rows:
        return {}
    r = rows[0]
    lat = r.measured_latency
    ttft, e2e = (lat.ttft_s, lat.e2e_s) if lat else (None, None)
    per_1k = r.cost_per_1k_requests_usd
    return {"ttft_p50": ttft and ttft.p50, "ttft_p90": ttft and ttft.p90, "e2e_p50": e2e and e2e.p50,
            "e2e_p90": e2e and e2e.p90, "cost_per_1k": per_1k, "cost_basis": r.cost_basis,
            "monthly": None if per_1k is None else per_1k * marker["monthly_requests"] / 1000, "run_dir": r.run_dir}


def to_markdown(res: dict, cost_ctx: dict | None) -> str:
    m, ref = res["marker"], res["reference"]
    lines = [f"# Migration: does the local model match {m['model']}?", "",
             f"Headline metric `{res['headline']}` ({'higher' if res['higher_is_better'] else 'lower'} is better), "
             f"non-inferiority margin {m['margin']}, paired per example over {ref['n_items']} captured items "
             "(95% intervals; seeds pooled).", ""]
    lines += [f"- {note}" for note in m.get("notes", [])]
    lines += ["", "## Verdict", ""] + [f"- {s['verdict']['line']}" for s in res["systems"]]
    lines += ["", "## Quality by training size", "", "| system | n | items | seeds | local | fine-tune | difference "
              "(95% CI) | non-inferior | test |", "|---|---|---|---|---|---|---|---|---|"]
    for s in res["systems"]:
        for t in s["tests"]:
            lines.append(f"| {s['name']} | {t['n']} | {t['n_items']} | {t.get('n_seeds', 0)} | {_na(t.get('local_mean'))} "
                         f"| {_na(t.get('reference_mean'))} | {_signed(t['diff'])} ({_signed(t['low'])} to "
                         f"{_signed(t['high'])}) | {'yes' if t['noninferior'] else 'no'} | {t['method']} |")
    lines += ["", "## Agreement with the fine-tune's own answers", "",
              "| system | n | metric | agreement (95% CI) | items |", "|---|---|---|---|---|"]
    for s in res["systems"]:
        for metric, (share, low, high, k) in s["agreement"].items():
            lines.append(f"| {s['name']} | {s['shown_n']} | {metric} | {share:.3f} ({_na(low)} to {_na(high)}) | {k} |")
    lines += ["", "## Latency and cost", "",
              f"Monthly cost at {m['monthly_requests']:,} requests a month. The fine-tune's latency was measured when "
              "it was captured (at OpenAI, over the network); the local systems' on this machine.", "",
              "| system | n | TTFT p50 | TTFT p90 | end-to-end p50 | end-to-end p90 | $ / 1k requests | $ / month | basis |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, n, side in [(ref["name"], "-", ref["side"])] + [(s["name"], s["shown_n"], s["side"]) for s in res["systems"]]:
        lines.append(f"| {name} | {n} | {_seconds(side.get('ttft_p50'))} | {_seconds(side.get('ttft_p90'))} "
                     f"| {_seconds(side.get('e2e_p50'))} | {_seconds(side.get('e2e_p90'))} "
                     f"| {_na(side.get('cost_per_1k'), '.4f')} | {_na(side.get('monthly'), ',.2f')} | {side.get('cost_basis') or ''} |")
    if cost_ctx:
        lines += ["", f"Prices checked {cost_ctx['prices_checked']} ({cost_ctx['prices_file']})."]
    if res["not_done"]:
        lines += ["", "## Cells not finished", ""] + [f"- {x}" for x in res["not_done"]]
    return "\n".join(lines) + "\n"


def write_migration_report(folder: Path) -> Path:
    folder = Path(folder)
    marker = json.loads((folder / MARKER).read_text())
    results = sweep_rows(folder)
    res = collect(folder, marker, results.rows, results.task)
    write_json(folder / "migration-results.json", res)
    return write_text(folder / "migration.md", to_markdown(res, results.cost))
