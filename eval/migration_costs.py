"""The migration report's "Latency and cost at the switch": the fine-tune at its token prices (dated, with
their source and age) against the local server at its measured throughput and the user's price for the
machine, each local figure with the hardware it was measured on (a CPU figure is not a GPU figure)."""

from __future__ import annotations

from ftscale.eval.report_document import fmt
from ftscale.eval.result_row import ResultRow
from ftscale.prices import age


def na(x, spec: str = ".3f") -> str:
    """A number for the migration report's tables, "n/a" when there is none."""
    return fmt(x, spec, missing="n/a")


def _seconds(x) -> str:
    return na(x) + ("" if x is None else " s")


def hardware(machine: dict | None) -> str:
    """Where a local figure was measured, in words."""
    if not machine:
        return "not recorded"
    if machine.get("gpu"):
        return f"GPU: {machine.get('gpu_count', 1)} x {machine['gpu']}"
    threads = machine.get("cpu_threads")
    return f"CPU only ({machine.get('processor') or 'unknown CPU'}" + (f", {threads} threads)" if threads else ")")


def side(rows: list[ResultRow], monthly_requests: int) -> dict:
    """Latency, throughput and cost of one system at one size (seeds: the first finished one's figures)."""
    if not rows:
        return {}
    r = rows[0]
    lat = r.measured_latency
    ttft, e2e = (lat.ttft_s, lat.e2e_s) if lat else (None, None)
    per_1k = r.cost_per_1k_requests_usd
    local = not r.backend.startswith(("openai", "captured"))
    throughput = (r.eval_requests / r.eval_wall_time_s) if local and r.eval_requests and r.eval_wall_time_s else None
    return {"ttft_p50": ttft and ttft.p50, "ttft_p90": ttft and ttft.p90, "e2e_p50": e2e and e2e.p50,
            "e2e_p90": e2e and e2e.p90, "cost_per_1k": per_1k, "cost_basis": r.cost_basis,
            "monthly": None if per_1k is None else per_1k * monthly_requests / 1000, "run_dir": r.run_dir,
            "backend": r.backend, "requests_per_s": throughput,
            "measured_on": hardware(r.eval_machine) if local else "OpenAI, over the network"}


def cost_section(res: dict, cost_ctx: dict | None) -> list[str]:
    m, ref = res["marker"], res["reference"]
    lines = ["## Latency and cost at the switch", "",
             f"Cost per month at {m['monthly_requests']:,} requests (`migrate plan --monthly-requests`). The fine-tune "
             "costs its fine-tuned token prices; a local system costs its machine's price per hour over its measured "
             "throughput (requests per second at the evaluation's concurrency). The fine-tune's latency was measured "
             "when it was captured, at OpenAI over the network (not at all when its answers came from stored traffic).",
             "",
             "| system | n | measured on | TTFT p50 | TTFT p90 | end-to-end p50 | end-to-end p90 | requests/s "
             "| $ / 1k requests | $ / month | basis |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(ref["name"], "-", ref["side"])] + [(s["name"], s["shown_n"], s["side"]) for s in res["systems"]]
    for name, n, sd in rows:
        lines.append(f"| {name} | {n} | {sd.get('measured_on', 'n/a')} | {_seconds(sd.get('ttft_p50'))} "
                     f"| {_seconds(sd.get('ttft_p90'))} | {_seconds(sd.get('e2e_p50'))} | {_seconds(sd.get('e2e_p90'))} "
                     f"| {na(sd.get('requests_per_s'), '.2f')} | {na(sd.get('cost_per_1k'), '.4f')} "
                     f"| {na(sd.get('monthly'), ',.2f')} | {sd.get('cost_basis') or ''} |")
    measured = {sd.get("measured_on") for _, _, sd in rows[1:] if sd}
    if any(x and x.startswith("CPU") for x in measured):
        lines += ["", "The local figures above were measured on a CPU: they say nothing of a GPU's speed or cost. "
                  "Before you switch, run the sweep (or `ftscale bench throughput`) on the machine that will serve, and "
                  "price it with `ftscale report DIR --hourly-usd PRICE` (or `--hardware NAME` from the price table)."]
    if cost_ctx:
        lines += ["", cost_ctx.get("prices_note") or f"Prices {age(cost_ctx['prices_checked'])} ({cost_ctx['prices_file']})."]
    return lines + [""]
