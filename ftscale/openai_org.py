"""An organisation's OpenAI fine-tunes: `ftscale openai inventory`, and the lookups capture needs.

    ftscale openai inventory [--base-url URL [--api-key-env NAME]] [--json]

Lists every fine-tuning job (all pages) and every `ft:` model of the organisation the key belongs
to: base model, created, training file, trained tokens, and the day the model stops answering
(the API's own `shutdown_date` where the models list gives one, else its base model's shutdown in
`configs/openai_deprecations.yaml`, whose source and checked date are printed with it).

The key comes from the environment and follows ftscale/apikey.py's one rule: OpenAI's own API gets
OPENAI_API_KEY; another endpoint (`--base-url`, or OPENAI_BASE_URL) gets a key only when one is paired
with it (`--api-key-env NAME`); the key is written nowhere and masked in any error text.
"""

from __future__ import annotations

import datetime as dt
import json

import openai

from .apikey import MISSING, PLACEHOLDER, mask, openai_client, unpaired_401
from .deprecations import DEFAULT, DeprecationTable, load_deprecations
from .errors import FtscaleError

STILL_POSSIBLE = ("what is still possible: capture a fine-tune's answers from prompts you supply "
                  "(`ftscale migrate capture ft:... --eval PROMPTS.jsonl --train TRAIN.jsonl`) while it still serves, "
                  "and evaluate an `ft:` model with `ftscale eval --backend openai --model ft:...`")


def client(base_url: str | None = None, api_key_env: str | None = None) -> openai.OpenAI:
    """The client for the organisation's endpoints, built as every ftscale client is (ftscale/apikey.py):
    the key goes only where the key rule sends it."""
    return openai_client(base_url, api_key_env, max_retries=5)


def refused(e: openai.APIStatusError, what: str, c: openai.OpenAI | None = None) -> FtscaleError:
    """One line for an API refusal: what was refused, the provider's words (keys masked), and what is
    still possible; for a 401 from an endpoint no key was paired with, how to pair one."""
    detail = mask(getattr(e, "message", None) or str(e))
    if isinstance(e, openai.AuthenticationError):
        if c is not None and c.api_key == PLACEHOLDER:  # no key was due to this endpoint, so none was sent
            return FtscaleError(f"{unpaired_401(str(c.base_url).rstrip('/'))} (asking for {what})")
        return FtscaleError(f"the endpoint rejected the key while asking for {what} ({e.status_code}: {detail}); "
                            f"check the key ({MISSING}, or the variable --api-key-env names)")
    if isinstance(e, openai.PermissionDeniedError):
        return FtscaleError(f"OpenAI refused {what} for this organisation ({e.status_code}: {detail}); "
                            f"OpenAI is winding down self-serve fine-tuning; {STILL_POSSIBLE}")
    return FtscaleError(f"OpenAI answered {e.status_code} to {what}: {detail}")


def list_jobs(c: openai.OpenAI) -> list:
    """Every fine-tuning job of the organisation, all pages (the SDK's cursor pagination)."""
    try:
        return list(c.fine_tuning.jobs.list(limit=100))
    except openai.APIStatusError as e:
        raise refused(e, "the list of fine-tuning jobs", c) from None


def list_models(c: openai.OpenAI) -> dict[str, object]:
    try:
        return {m.id: m for m in c.models.list()}
    except openai.APIStatusError as e:
        raise refused(e, "the list of models", c) from None


def job_of(jobs: list, model_id: str):
    """The job that produced `model_id`, or None."""
    return next((j for j in jobs if j.fine_tuned_model == model_id), None)


def stops_answering(model_id: str, models: dict, table: DeprecationTable, today: dt.date) -> tuple[str, str]:
    """(day or "not announced", where it comes from) for one model."""
    api_day = getattr(models.get(model_id), "shutdown_date", None)
    if api_day:
        day = dt.date.fromisoformat(str(api_day)[:10])
        return f"{day} ({(day - today).days} days)", "the API's models list"
    found = table.shutdown(model_id)
    if found is None:
        return "not announced", f"not in {DEFAULT}"
    return table.shutdown_text(model_id, today), DEFAULT


def inventory(c: openai.OpenAI, table: DeprecationTable, today: dt.date | None = None) -> list[dict]:
    """One row per job (and per `ft:` model no listed job produced), newest first."""
    today = today or dt.date.today()
    jobs, models = list_jobs(c), list_models(c)
    rows = []
    for j in jobs:
        when, source = stops_answering(j.fine_tuned_model, models, table, today) if j.fine_tuned_model else ("-", "-")
        rows.append({"job": j.id, "status": j.status, "model": j.fine_tuned_model, "base": j.model,
                     "created": dt.datetime.fromtimestamp(j.created_at, dt.timezone.utc).date().isoformat(),
                     "training_file": j.training_file, "validation_file": j.validation_file,
                     "trained_tokens": j.trained_tokens, "stops_answering": when, "date_source": source})
    produced = {j.fine_tuned_model for j in jobs}
    for mid, m in models.items():
        if mid.startswith("ft:") and mid not in produced:
            when, source = stops_answering(mid, models, table, today)
            rows.append({"job": None, "status": "no job listed", "model": mid, "base": table.base_of(mid),
                         "created": dt.datetime.fromtimestamp(m.created, dt.timezone.utc).date().isoformat(),
                         "training_file": None, "validation_file": None, "trained_tokens": None,
                         "stops_answering": when, "date_source": source})
    return rows


def wind_down_lines(table: DeprecationTable, today: dt.date) -> list[str]:
    f = table.fine_tuning
    return [f"fine-tuning wind-down: organisations that never fine-tuned refused from {f.never_fine_tuned_refused}; "
            f"without fine-tuned traffic in {f.inactive_days} days from {f.inactive_refused}; no new job after "
            f"{f.last_job_day} ({(f.last_job_day - today).days} days from {today})",
            table.provenance()]


def format_inventory(rows: list[dict], table: DeprecationTable, today: dt.date) -> str:
    cols = ("model", "base", "created", "training_file", "trained_tokens", "stops_answering", "job", "status")
    table_rows = [[str(r[c]) if r[c] is not None else "-" for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table_rows)) if table_rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in table_rows]
    if not rows:
        lines.append("(no fine-tuning jobs and no ft: models in this organisation)")
    return "\n".join(lines + [""] + wind_down_lines(table, today))


def main(base_url: str | None, as_json: bool, deprecations: str = DEFAULT, today: dt.date | None = None,
         api_key_env: str | None = None) -> str:
    table = load_deprecations(deprecations)
    today = today or dt.date.today()
    rows = inventory(client(base_url, api_key_env), table, today)
    if as_json:
        return json.dumps({"rows": rows, "deprecations": {"checked": table.checked, "source": table.source}}, indent=2)
    return format_inventory(rows, table, today)
