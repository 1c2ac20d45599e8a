"""Cost next to quality: what each evaluated system cost to train, what 1,000 requests cost, and after
how many requests fine-tuning pays for itself against prompting the bigger reference model.

- OpenAI models: tokens x the price table (fine-tunes at their fine-tuned prices; training at the
  job's trained tokens, or the pre-launch estimate until the job reports them).
- Local systems (hf, vLLM): the machine's price per hour x measured wall time (training, and the
  evaluation's wall time per request at the concurrency it ran with).
- Break-even: the smallest number of requests N with train + N x per-request <= N x reference
  per-request; "never" when the system is not cheaper per request than the reference.
"""

from __future__ import annotations

import math

from ftscale.config import CostSpec
from ftscale.prices import PriceTable

from .result_row import ResultRow


def local_rate(table: PriceTable, spec: CostSpec, machine: dict | None) -> tuple[float, str, str | None]:
    """(USD per hour, how it is priced, the price-table entry used: None for the user's own cost.hourly_usd)."""
    if spec.hourly_usd is not None:
        return spec.hourly_usd, f"${spec.hourly_usd:.2f}/h (cost.hourly_usd)", None
    key, entry = table.machine(spec.hardware, (machine or {}).get("gpu"))
    return entry.hourly_usd, f"{key} at ${entry.hourly_usd:.2f}/h", key


def _is_local(row: ResultRow) -> bool:
    return not row.backend.startswith("openai")


def system_cost(row: ResultRow, table: PriceTable, spec: CostSpec) -> dict:
    """Training cost and cost per request of one report row; None where the inputs are missing."""
    out = {"training_cost_usd": None, "cost_per_request_usd": None, "cost_basis": None, "price_keys": []}
    if _is_local(row):
        rate, basis, key = local_rate(table, spec, row.eval_machine or row.train_machine)
        out["cost_basis"], out["price_keys"] = basis, [key] if key else []
        if row.num_train_examples == 0:
            out["training_cost_usd"] = 0.0
        elif row.train_wall_time_s is not None:
            train_rate, _, train_key = local_rate(table, spec, row.train_machine)
            out["price_keys"] += [train_key] if train_key else []
            out["training_cost_usd"] = row.train_wall_time_s / 3600 * train_rate
        if row.eval_wall_time_s and row.eval_requests:
            out["cost_per_request_usd"] = row.eval_wall_time_s / row.eval_requests / 3600 * rate
        return out
    found = table.model(row.model)
    if found is None:
        out["cost_basis"] = f"no price for {row.model!r} in the price table"
        return out
    key, prices, fine_tuned = found
    token_prices = prices.fine_tuned if fine_tuned else prices
    out["cost_basis"], out["price_keys"] = f"{key}{' fine-tuned' if fine_tuned else ''} token prices", [key]
    if fine_tuned and prices.training is not None:
        tokens = row.trained_tokens or row.estimated_billed_tokens
        if tokens:
            out["training_cost_usd"] = tokens * prices.training / 1e6
            if not row.trained_tokens:
                out["cost_basis"] += " (training: pre-launch token estimate)"
    elif not fine_tuned:
        out["training_cost_usd"] = 0.0
    if token_prices is not None and row.mean_input_tokens is not None:
        out["cost_per_request_usd"] = token_prices.per_request(row.mean_input_tokens, row.mean_output_tokens,
                                                               spec.cached_input_fraction)
    return out


def reference_cost(rows: list[ResultRow], table: PriceTable, spec: CostSpec) -> tuple[float | None, str]:
    """Per-request cost of prompting the reference model: measured if it was evaluated, else estimated
    from the untrained base's token counts with the same prompt variant."""
    ref = table.model(spec.reference_model)
    if ref is None:
        return None, f"reference model {spec.reference_model!r} has no price in the table"
    key, prices, _ = ref
    for r in rows:
        found = table.model(r.model) if not _is_local(r) else None
        if found and found[0] == key and not found[2] and r.prompt_variant == spec.reference_variant \
                and r.mean_input_tokens is not None:
            cost = prices.per_request(r.mean_input_tokens, r.mean_output_tokens, spec.cached_input_fraction)
            return cost, f"{key} with the {spec.reference_variant} prompt, measured tokens"
    for r in rows:
        if _is_local(r) and r.num_train_examples == 0 and r.prompt_variant == spec.reference_variant \
                and r.mean_input_tokens is not None:
            cost = prices.per_request(r.mean_input_tokens, r.mean_output_tokens, spec.cached_input_fraction)
            return cost, (f"{key} with the {spec.reference_variant} prompt, estimated from the local base model's "
                          f"token counts for that prompt (not evaluated on {key})")
    return None, f"no {spec.reference_variant} evaluation to estimate the reference model's tokens from"


def break_even(training_usd: float | None, per_request: float | None, reference: float | None) -> int | str | None:
    if training_usd is None or per_request is None or reference is None:
        return None
    if per_request >= reference:
        return "never"
    return math.ceil(training_usd / (reference - per_request)) if training_usd > 0 else 0


def add_costs(rows: list[ResultRow], table: PriceTable, spec: CostSpec) -> dict:
    """Add training cost, cost per 1,000 requests and break-even to every row; return the context the
    report prints (table date and age, the source of every price used, reference)."""
    reference, reference_basis = reference_cost(rows, table, spec)
    ref_key = (table.model(spec.reference_model) or (spec.reference_model,))[0]
    used = [ref_key] if reference is not None else []
    for r in rows:
        c = system_cost(r, table, spec)
        used += c["price_keys"]
        is_reference = (not _is_local(r) and (table.model(r.model) or ("",))[0] == ref_key
                        and r.prompt_variant == spec.reference_variant and not r.model.startswith("ft:"))
        r.training_cost_usd = c["training_cost_usd"]
        r.cost_basis = c["cost_basis"]
        r.cost_per_1k_requests_usd = None if c["cost_per_request_usd"] is None else 1000 * c["cost_per_request_usd"]
        r.break_even_requests = None if is_reference else break_even(c["training_cost_usd"], c["cost_per_request_usd"],
                                                                     reference)
    return {"prices_checked": table.checked, "currency": table.currency, "prices_file": str(spec.prices),
            "prices_note": table.provenance(spec.prices, used), "prices_used": list(dict.fromkeys(used)),
            "reference_model": spec.reference_model, "reference_variant": spec.reference_variant,
            "reference_cost_per_1k_requests_usd": None if reference is None else 1000 * reference,
            "reference_basis": reference_basis, "cached_input_fraction": spec.cached_input_fraction}
