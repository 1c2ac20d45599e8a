"""The migration report's text (`migration.md`), from what eval/migration_report.py collected: what the
verdict means, the verdict, the tests behind it, agreement, latency and cost at the switch, and the shadow
check on later traffic."""

from __future__ import annotations

from ftscale.eval.migration_costs import cost_section, na as _na
from ftscale.eval.noninferiority import ALPHA
from ftscale.migrate_shadow import line as shadow_line


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def meaning(margin: float) -> list[str]:
    """What "YES at margin m" means, in two sentences a product manager can read."""
    pct = f"{margin * 100:g}"
    return [f"**What YES means.** \"YES at margin {margin}\" means: on these eval prompts, the local model is shown "
            f"to be at most {pct} points (a share of {margin}) worse than the fine-tune on the headline metric, with "
            f"at most a {ALPHA * 100:g}% chance that it is really worse than that. It does not mean the two answer "
            "alike on every request, nor anything about prompts unlike these: re-check on fresh traffic with "
            "`ftscale migrate shadow` before you switch."]


def header(res: dict) -> list[str]:
    m, ref = res["marker"], res["reference"]
    lines = [f"# Migration: does the local model match {m['model']}?", "",
             f"Headline metric `{res['headline']}` ({'higher' if res['higher_is_better'] else 'lower'} is better), "
             f"non-inferiority margin {m['margin']}, paired per example over {ref['n_items']} captured items.", ""]
    lines += meaning(m["margin"]) + [""]
    notes = list(m.get("notes", []))
    if not m.get("task"):
        notes.append("No task was given (`migrate plan --task`): the reference is the fine-tune itself, which agrees "
                     "with its own answers on every item (score 1), so the test is the local model's agreement "
                     f"with the fine-tune against 1: YES means it agrees on at least {1 - m['margin']:.0%} of such "
                     "prompts")
    if ref.get("showable_margin") is not None and ref["showable_margin"] >= m["margin"]:
        notes.append(f"These {ref['n_items']} items can show a margin of {ref['showable_margin']:.3f} at best (every "
                     f"answer agreeing); {m['margin']} needs {ref.get('items_needed') or 'more than 1,000,000'} items")
    notes += res.get("temperature_notes", [])
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def verdict(res: dict) -> list[str]:
    return ["## Verdict", ""] + [f"- {s['verdict']['line']}" for s in res["systems"]] + [""]


def quality(res: dict) -> list[str]:
    lines = ["## Quality by training size", "",
             f"Sizes are tested from the largest down, each at the system's one-sided level (at most {ALPHA}), "
             "and a system's sequence stops at its first failure. p: the chance of a difference at least this "
             "favourable if the local model were worse by the margin.", "",
             "| system | n | items | seeds | local | fine-tune | difference (95% CI) | p | tested | passed | test |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in res["systems"]:
        for t in s["tests"]:
            lines.append(f"| {s['name']} | {t['n']} | {t['n_items']} | {t.get('n_seeds', 0)} | {_na(t.get('local_mean'))} "
                         f"| {_na(t.get('reference_mean'))} | {_signed(t['diff'])} ({_signed(t['low'])} to "
                         f"{_signed(t['high'])}) | {t['p_value']:.2g} | {'yes' if t.get('tested') else 'no'} "
                         f"| {'yes' if t.get('passed') else 'no'} | {t['method']} |")
    return lines + [""]


def agreement(res: dict) -> list[str]:
    lines = ["## Agreement with the fine-tune's own answers", "",
             "| system | n | metric | agreement (95% CI) | items |", "|---|---|---|---|---|"]
    for s in res["systems"]:
        for metric, (share, low, high, k) in s["agreement"].items():
            lines.append(f"| {s['name']} | {s['shown_n']} | {metric} | {share:.3f} ({_na(low)} to {_na(high)}) | {k} |")
    return lines + [""]


def shadow(res: dict) -> list[str]:
    """The shadow sets replayed so far: each one's own verdict (never pooled with the first eval set)."""
    lines = ["## Shadow check on later traffic", ""]
    if not res.get("shadow"):
        return lines + ["None yet. Before the cut-over, replay recent requests to both: `ftscale migrate shadow "
                        f"{res['folder']} --requests RECENT.jsonl`.", ""]
    return lines + [f"- {shadow_line(r)}" for r in res["shadow"]] + [""]


def switch(res: dict) -> list[str]:
    """The report's last line: the command that serves the chosen system under the fine-tune's name."""
    if not any(s["verdict"]["smallest_n"] is not None for s in res["systems"]):
        return ["## The switch", "", "No local system matches yet: nothing to switch to.", ""]
    return ["## The switch", "", "Serve the chosen system under the fine-tune's own model name (the product changes "
            "only its base URL and key):", "", f"    ftscale migrate serve {res['folder']}", ""]


def to_markdown(res: dict, cost_ctx: dict | None) -> str:
    lines = header(res) + verdict(res) + quality(res) + agreement(res) + cost_section(res, cost_ctx)
    lines += shadow(res)
    if res["not_done"]:
        lines += ["## Cells not finished", ""] + [f"- {x}" for x in res["not_done"]] + [""]
    return "\n".join(lines + switch(res))
