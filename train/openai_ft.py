"""Launch an OpenAI fine-tuning job on the same nested subset as a local run, and follow it.

    python train/openai_ft.py --config configs/experiments/formatting-smollm2-cpu.yaml --num_train_examples 100
    ftscale train --backend openai --config ... --num_train_examples 100 [--yes]

The job's state lives in the run directory (`openai_job.json`, written atomically after every
step), so a launcher that is interrupted and started again follows the same job instead of
starting a second one. Which key goes to the endpoint is ftscale/apikey.py's rule; it is written nowhere.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.pop(0)  # run as a script: train/ must not shadow installed packages (`openai`)

import openai

from ftscale.apikey import MISSING, mask, openai_client
from ftscale.atomic import write_json, write_jsonl, write_text
from ftscale.chatdata import nested_subset, read_jsonl, sha256_file
from ftscale.config import ExperimentConfig, load_config, parse_overrides, write_task_data
from ftscale.datacheck import check_file
from ftscale.errors import ConfigError, FtscaleError, run_command
from ftscale.flags import Parser
from ftscale.prices import age, load_prices
from ftscale.rundir import TRAIN_METRICS, read_json

STATE = "openai_job.json"
DONE = ("succeeded", "failed", "cancelled")
WIND_DOWN = ("OpenAI refused to create the fine-tuning job: {detail}\n"
             "OpenAI is winding down self-serve fine-tuning (new jobs end on 2027-01-06, and many organisations are "
             "already refused). Existing fine-tuned models keep working: evaluate one with "
             "`ftscale eval --backend openai --model ft:...`, or fine-tune with another OpenAI-compatible provider "
             "via `--openai.base_url URL`.")


def run_dir_for(cfg: ExperimentConfig, n: int) -> Path:
    return cfg.experiment_dir / f"openai-{cfg.openai.model}-n{n:04d}-seed{cfg.train.seed}"


def eval_dir_for(cfg: ExperimentConfig, model: str) -> Path:
    """Where an OpenAI model's evaluation goes, so that the report shows it beside local runs: an
    `ft:` model launched from this experiment into its job's run directory (its training size
    known), any other model into a cell of its own that records it as untrained (n = 0)."""
    for state in sorted(cfg.experiment_dir.glob(f"openai-*/{STATE}")):
        if (read_json(state) or {}).get("fine_tuned_model") == model:
            return state.parent
    cell = cfg.experiment_dir / ("openai-" + model.replace("/", "_").replace(":", "_") + "-n0000")
    if not (cell / "config.yaml").is_file():
        prompted = cfg.model_copy(update={"openai": cfg.openai.model_copy(update={"model": model})})
        write_text(cell / "config.yaml", prompted.cell_yaml(0))
    return cell


def _client(cfg: ExperimentConfig):
    return openai_client(cfg.openai.base_url, cfg.openai.api_key_env, max_retries=5)


def api_error(e: openai.APIError, cfg: ExperimentConfig) -> FtscaleError:
    """One line for an API failure that no retry mends, saying what to do (never the key itself)."""
    where = cfg.openai.base_url or "api.openai.com"
    detail = mask(getattr(e, "message", None) or str(e))  # a provider's message may quote the key
    if isinstance(e, openai.AuthenticationError):
        return FtscaleError(f"{where} refused the API key (401): {MISSING} with a valid key")
    if isinstance(e, openai.PermissionDeniedError):
        return FtscaleError(f"{where}: the API key may not do this (403: {detail}); use a key of a project "
                            "that has fine-tuning enabled")
    if isinstance(e, openai.RateLimitError):
        if getattr(e, "code", None) == "insufficient_quota":
            return FtscaleError(f"{where}: the account has no quota left (429 insufficient_quota); add credit to "
                                "the account (OpenAI: platform.openai.com billing), then run the same command again")
        return FtscaleError(f"{where}: rate-limited (429) after retries; wait a minute and run the same command again")
    if isinstance(e, openai.APIConnectionError):  # timeouts included
        return FtscaleError(f"cannot reach {where} ({type(e).__name__}): check the network, a proxy, or "
                            "--openai.base_url; then run the same command again")
    status = getattr(e, "status_code", "?")
    return FtscaleError(f"{where} answered {status}: {detail}")


def _preflight(client, cfg: ExperimentConfig) -> None:
    """One cheap authenticated call before anything is written, so a bad key, no network or no quota is
    said at once; few retries, so an unreachable endpoint fails in seconds."""
    try:
        client.with_options(max_retries=1).fine_tuning.jobs.list(limit=1)
    except openai.APIError as e:
        raise api_error(e, cfg) from None


def _confirm(cfg: ExperimentConfig, n: int, billed_tokens: int) -> None:
    if input(f"Start an OpenAI fine-tuning job of {cfg.openai.model} on {n} examples "
             f"(~{billed_tokens} billed tokens)? [y/N] ").strip().lower() not in ("y", "yes"):
        raise FtscaleError("cancelled: no job was started")


def _hyperparameters(cfg: ExperimentConfig) -> dict:
    o = cfg.openai
    return {"n_epochs": o.epochs, "batch_size": o.batch_size, "learning_rate_multiplier": o.learning_rate_multiplier}


def prepare(cfg: ExperimentConfig, n: int, run_dir: Path) -> tuple[Path, object]:
    """Write the nested subset as the job's training file and check it against OpenAI's rules."""
    subset = nested_subset(read_jsonl(cfg.data.train, "train"), n, cfg.data.seed)
    path = write_jsonl(run_dir / "train.jsonl", subset)
    epochs = cfg.openai.epochs if isinstance(cfg.openai.epochs, int) else 3  # OpenAI's usual choice for "auto"
    report = check_file(path, model=cfg.openai.model, epochs=epochs)
    if not report.ok:
        raise FtscaleError("the training file fails OpenAI's checks; nothing was uploaded:\n" + report.format())
    return path, report


def estimate_line(cfg: ExperimentConfig, billed_tokens: int) -> str:
    """The training cost estimate shown before anything is spent, with the price table's date."""
    table = load_prices(cfg.cost.prices)
    found = table.model(cfg.openai.model)
    if found is None or found[1].training is None:
        return (f"estimated training cost: unknown ({cfg.openai.model} has no training price in {cfg.cost.prices}); "
                f"{billed_tokens} billed tokens")
    key, prices, _ = found
    return (f"estimated training cost: ${billed_tokens * prices.training / 1e6:.2f} ({billed_tokens} tokens x "
            f"${prices.training:.2f}/1M for {key}; prices {age(prices.checked)}, source: {prices.source}; "
            f"your own prices: --prices FILE)")


def launch(cfg: ExperimentConfig, n: int, run_dir: Path, yes: bool = False, log=print) -> dict:
    """Upload, create and follow a job; resume following it if the run directory already names one."""
    if n <= 0:
        raise ConfigError("num_train_examples: an OpenAI job needs training examples (0 is the base model)")
    run_dir = Path(run_dir)
    state = read_json(run_dir / STATE) or {}
    client = _client(cfg)
    if not state.get("job_id"):
        if not yes and not sys.stdin.isatty():
            raise FtscaleError("no terminal to confirm the job on: pass --yes to start it without asking")
        _preflight(client, cfg)
        path, report = prepare(cfg, n, run_dir)
        log(report.format())
        log(estimate_line(cfg, report.billed_tokens))
        if not yes:
            _confirm(cfg, n, report.billed_tokens)
        write_text(run_dir / "config.yaml", cfg.cell_yaml(n))
        state = {"backend": "openai", "model": cfg.openai.model, "base_url": cfg.openai.base_url,
                 "num_train_examples": n, "seed": cfg.train.seed, "data_seed": cfg.data.seed,
                 "data_sha256": sha256_file(cfg.data.train), "training_file_sha256": sha256_file(path),
                 "estimated_billed_tokens": report.billed_tokens, "events": []}
        try:
            with open(path, "rb") as f:
                state["file_id"] = client.files.create(file=f, purpose="fine-tune").id
        except openai.APIError as e:
            raise api_error(e, cfg) from None
        write_json(run_dir / STATE, state)
        try:
            job = client.fine_tuning.jobs.create(
                model=cfg.openai.model, training_file=state["file_id"], seed=cfg.train.seed,
                suffix=cfg.openai.suffix or f"ftscale-n{n}",
                method={"type": "supervised", "supervised": {"hyperparameters": _hyperparameters(cfg)}})
        except (openai.PermissionDeniedError, openai.BadRequestError, openai.NotFoundError) as e:
            raise FtscaleError(WIND_DOWN.format(detail=mask(getattr(e, "message", str(e))))) from None
        except openai.APIError as e:
            raise api_error(e, cfg) from None
        state["job_id"] = job.id
        write_json(run_dir / STATE, state)
        log(f"created job {job.id} ({job.status}); state in {run_dir / STATE}")
    else:
        log(f"resuming job {state['job_id']} recorded in {run_dir / STATE}")
    try:
        return follow(client, cfg, run_dir, state, log)
    except openai.APIError as e:  # the job goes on at the provider; the same command follows it again
        raise api_error(e, cfg) from None


def follow(client, cfg: ExperimentConfig, run_dir: Path, state: dict, log=print) -> dict:
    """Poll the job, showing its new events, until it ends; record everything in the run dir."""
    seen = {e["id"] for e in state["events"]}
    while True:
        job = client.fine_tuning.jobs.retrieve(state["job_id"])
        events = client.fine_tuning.jobs.list_events(state["job_id"], limit=100).data
        for event in sorted((e for e in events if e.id not in seen), key=lambda e: e.created_at):
            seen.add(event.id)
            state["events"].append({"id": event.id, "created_at": event.created_at, "level": event.level,
                                    "message": event.message})
            log(f"[{job.status}] {event.message}")
        state.update(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
                     error=mask(job.error.message) if job.error and job.error.message else None)
        write_json(run_dir / STATE, state)
        if job.status in DONE:
            break
        time.sleep(cfg.openai.poll_interval_s)
    if job.status != "succeeded":
        raise FtscaleError(f"OpenAI job {job.id} ended {job.status}: {state['error'] or 'no reason given'}")
    write_json(run_dir / TRAIN_METRICS, {k: state.get(k) for k in (
        "backend", "model", "num_train_examples", "seed", "data_seed", "data_sha256", "job_id", "file_id",
        "fine_tuned_model", "trained_tokens", "estimated_billed_tokens")} | {"trained": True})
    log(f"job {job.id} succeeded: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0],
                                     epilog="Any config key can be overridden: --section.key value")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--output-dir", type=Path, help="run directory (default: <experiment>/openai-<model>-n<N>-seed<S>)")
    parser.add_argument("--yes", action="store_true", help="start the job without asking")
    args, rest = parser.parse_known_args(argv)

    def command():
        cfg = load_config(args.config, parse_overrides(rest))
        write_task_data(cfg)  # a dataset its task names, written out for the training
        n = cfg.single_size()
        launch(cfg, n, args.output_dir or run_dir_for(cfg, n), yes=args.yes)

    return run_command(command, "interrupted: the job goes on at OpenAI; run the same command again to follow it")


if __name__ == "__main__":
    raise SystemExit(main())
