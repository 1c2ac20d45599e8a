"""The one cell runner: `ftscale run`, `ftscale eval` and `ftscale sweep` take every step through here.

A cell is one run directory: a training (or the untrained base, or an OpenAI job or prompted model)
and the evaluations of what it produced. Each step is reused only when its completion record
(ftscale/completion.py) names exactly the inputs the step would be made from now, and, for an
evaluation, the training record it evaluated. A failed evaluation writes no record: it is reported,
counted in the exit code, and redone by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from . import children, completion, progress
from .chatdata import sha256_records
from .config import ExperimentConfig
from .atomic import write_text
from .rundir import TRAIN_METRICS, eval_dir, probe_dir
from .stepinputs import model_identity, openai_train_inputs, task_identity, train_inputs
from .train import divergence, tracking
from .train.chat_template_check import template_text


def sampling_of(cfg: ExperimentConfig, task=None):
    """The experiment's sampling; a task's own defaults fill the keys the experiment does not set."""
    from ftscale.eval.backends import Sampling

    e = cfg.eval
    chosen = {k: getattr(e, k) for k in ("temperature", "top_p", "max_new_tokens")}
    for key, value in (getattr(task, "sampling", None) or {}).items():
        if key not in e.model_fields_set:
            chosen[key] = value
    return Sampling(**chosen, seed=e.seed)


def eval_label(backend: str, temperature: float) -> str:
    """An evaluation's label in its folder's name: the backend, and the temperature unless greedy."""
    return backend if temperature == 0.0 else f"{backend}-t{temperature:g}"


def at_temperature(cfg: ExperimentConfig, t: float) -> ExperimentConfig:
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"temperature": t})})


@dataclass(frozen=True)
class Answerer:
    """What answers an evaluation's requests: a folder label, what identifies its answers (never a
    port or anything else that changes between runs without changing the answers), and a factory."""

    label: str
    identity: dict
    make: Callable


def hf_answerer(cfg: ExperimentConfig, adapter: Path | None, model: str | None = None, label: str = "hf",
                quantization: str | None = None) -> Answerer:
    """In-process transformers: the config's model (or `model`, or its 4-bit load), with the adapter if any.
    Quantization: default the training's, so that a QLoRA adapter answers on the 4-bit base it trained on."""
    from .eval.backends import make_backend

    ref = model or cfg.model
    quantization = (cfg.train.quantization if model is None else "none") if quantization is None else quantization
    template = template_text(cfg.train.chat_template) if cfg.train.chat_template and model is None else None
    identity = {"backend": label, "model": model_identity(ref), "precision": cfg.eval.precision,
                # the adapter's own identity is the training record every evaluation names as upstream
                "batch_size": cfg.eval.batch_size, "adapter": adapter is not None, "quantization": quantization,
                # only when named, so that records made before the option stay valid
                **({"chat_template": cfg.train.chat_template} if template else {})}
    return Answerer(label, identity, lambda: make_backend("hf", model=ref, adapter=str(adapter) if adapter else None,
                                                          batch_size=cfg.eval.batch_size, dtype=cfg.eval.precision,
                                                          quantization=quantization, name=label, chat_template=template))


def endpoint_answerer(model: str, base_url: str | None, concurrency: int, label: str = "openai",
                      served: dict | None = None, api_key_env: str | None = None, api_key: str | None = None) -> Answerer:
    """An OpenAI-compatible endpoint, with the key paired to it (ftscale/apikey.py). `served`: for a
    server ftscale started itself, what it serves (its URL has a fresh port each time, so the URL
    does not identify it), and `api_key` its random key (nor does that: it is no part of the identity)."""
    from .eval.backends import make_backend

    identity = {"backend": label, "model": model} | (served if served is not None else {"base_url": base_url})
    return Answerer(label, identity, lambda: make_backend("openai", name=label, model=model, base_url=base_url,
                                                          api_key_env=api_key_env, api_key=api_key,
                                                          concurrency=concurrency))


def captured_answerer(path: Path, model: str) -> Answerer:
    """A migrated OpenAI fine-tune's recorded answers, replayed by example id (eval/backends/captured.py)."""
    from .chatdata import sha256_file
    from .eval.backends import make_backend

    identity = {"backend": "captured", "model": model, "captured_sha256": sha256_file(path)}
    return Answerer("captured", identity, lambda: make_backend("captured", path=path, model=model))


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: a prompt variant (or the probes) at one temperature, in its own folder."""

    label: str
    variant: str
    task: object
    examples: list
    out_dir: Path
    sampling: object
    inputs: dict


@dataclass(frozen=True)
class Failure:
    where: Path
    error: str

    def line(self) -> str:
        return f"{self.where}: {self.error}"


def eval_jobs(cfg: ExperimentConfig, cell: Path, task, pool: list[dict], examples: list[dict], variants: list[str],
              answerer: Answerer, probes: tuple | None = None) -> list[EvalJob]:
    """Every evaluation a cell owes at the config's temperatures, with the inputs it is made from."""
    jobs = []
    common = {"examples_sha256": sha256_records(examples), "pool_sha256": sha256_records(pool),
              "few_shot_k": cfg.eval.few_shot_k, "answerer": answerer.identity}
    task_id = task_identity(task)
    probe_id = task_identity(probes[0]) if probes else None
    # without eval.temperatures, the one temperature sampling_of resolves (the task's default if the config sets none)
    for t in cfg.eval.temperatures or [sampling_of(cfg, task).temperature]:
        label = eval_label(answerer.label, t)
        sampling = sampling_of(at_temperature(cfg, t), task)
        for variant in dict.fromkeys(variants):
            inputs = common | {"task": task_id, "variant": variant, "sampling": sampling.as_dict()}
            jobs.append(EvalJob(label, variant, task, examples, eval_dir(cell, variant, label), sampling, inputs))
        if probes:
            probe_task, probe_examples = probes
            # the probes' answer length is theirs, not the task's; they are asked as written
            ps = replace(sampling_of(at_temperature(cfg, t), probe_task),
                         max_new_tokens=probe_task.sampling.get("max_new_tokens", sampling.max_new_tokens))
            inputs = common | {"task": probe_id, "variant": "default",
                               "examples_sha256": sha256_records(probe_examples), "sampling": ps.as_dict()}
            jobs.append(EvalJob(label, "default", probe_task, probe_examples, probe_dir(cell, label), ps, inputs))
    return jobs


def upstream_of(cell: Path) -> str | None:
    """The identity of what a cell's evaluations evaluate: its valid training record, if any."""
    rec = completion.valid(cell)
    return rec["record_sha256"] if rec else None


def run_evals(cell: Path, jobs: list[EvalJob], answerer: Answerer, pool: list[dict], few_shot_k: int,
              log=print) -> list[Failure]:
    """Evaluate every job not already done for these inputs; the backend is built only if there is work."""
    from .eval.evaluate import FAILED, SCORES, TIMING, evaluate, failure_count

    upstream = upstream_of(cell)
    todo = [j for j in jobs if completion.done(j.out_dir, j.inputs, upstream) is None]
    if not todo:
        return []
    progress.report(f"loading the model ({answerer.label})")
    backend, failures, tracked = answerer.make(), [], {}
    for job in todo:
        progress.report(f"answering {'probes' if job.out_dir.name.startswith('probes') else job.variant} ({job.label})")
        completion.begin(job.out_dir)
        result = evaluate(job.task, job.examples, pool, backend, job.sampling, job.variant, job.out_dir, few_shot_k)
        where = f"{cell.name} [{job.label}, {'probes' if job.out_dir.name.startswith('probes') else job.variant}]"
        if failure_count(result):
            report = completion.read(job.out_dir, FAILED)
            first = report["errors"][0]["error"] if report["errors"] else "unknown error"
            failures.append(Failure(job.out_dir, f"{failure_count(result)} of {result['n']} requests failed ({first})"))
            log(f"{where}: FAILED, {failures[-1].error}; not recorded as done, the next run asks again")
            continue
        completion.finish(job.out_dir, "eval", job.inputs, ["generations.jsonl", SCORES, TIMING], upstream)
        tracked |= tracking.eval_metrics(job.label, "probes" if job.out_dir.name.startswith("probes") else job.variant,
                                         result["metrics"])
        log(f"{where}: " + ", ".join(f"{k}={v:.3f}" if v is not None else f"{k}=n/a"
                                     for k, v in result["metrics"].items()))
    if tracked:
        tracking.log_run(cell, tracked)  # the cell's tracker run, when its config asks for one
    return failures


def ensure_trained(cfg: ExperimentConfig, n: int, cell: Path, log=print, accelerate_config: Path | None = None) -> dict:
    """The cell's training record: reused when its inputs are unchanged, else trained (again)."""
    inputs = train_inputs(cfg, n)
    rec = completion.done(cell, inputs)
    if rec is not None:
        log(f"{cell.name}: training already done, reusing {cell / 'adapter' if n else 'the base model'}")
        tracking.prepare(cfg, cell, tracking.input_facts(inputs))  # its evaluations go to this config's trackers
        return rec
    if completion.read(cell) is not None or (cell / "config.yaml").is_file():
        log(f"{cell.name}: config changed since the last run (or its training did not finish); training again")
    progress.report("training" if n > 0 else "recording the base model")
    if accelerate_config is not None and n > 0:
        _train_under_accelerate(cfg, n, cell, accelerate_config)
    else:
        from .train.sft import train

        metrics = train(cfg, n, cell)
        if metrics.get("trained"):
            log(f"{cell.name}: trained {metrics['steps']} steps in {metrics['wall_time_s']:.1f} s "
                f"({metrics['train_tokens_per_s']:.0f} tokens/s), loss {metrics['train_loss']:.3f}")
    rec = completion.done(cell, inputs)
    if rec is None:
        from .errors import StepsFailed

        raise StepsFailed(f"{cell}: the training ended without its completion record")
    return rec


def launch_config(cfg: ExperimentConfig, n: int) -> dict:
    """The config an `accelerate launch`ed training reads: the cell's, plus how the training is watched
    and checked (left out of the cell's config, which holds only what decides its results)."""
    launch = yaml.safe_load(cfg.cell_yaml(n))
    launch["train"] |= {"report_to": cfg.train.report_to, "watchdog": cfg.train.watchdog.model_dump(mode="json"),
                        "stop_check": cfg.train.stop_check}
    return launch


def _train_under_accelerate(cfg: ExperimentConfig, n: int, cell: Path, accelerate_config: Path) -> None:
    import subprocess
    import sys

    from .errors import StepsFailed

    cfg_file = write_text(cell / "launch-config.yaml", yaml.safe_dump(launch_config(cfg, n), sort_keys=False))
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(accelerate_config),
           "-m", "ftscale.train.sft", "--config", str(cfg_file), "--output_dir", str(cell)]
    # in a group of its own that dies with this process, SIGKILL included, and is stopped on Ctrl-C,
    # SIGTERM or SIGHUP: a training left running would write into a cell a new run has taken over
    proc = children.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        _, stderr = proc.communicate()
    finally:
        children.stop(proc)
    if proc.returncode != 0:
        diverged = divergence.read(cell)
        if diverged is not None:
            raise divergence.Diverged(f"{cell}: training {divergence.reason(diverged)}")
        raise StepsFailed(f"accelerate launch failed ({proc.returncode}): {stderr[-2000:]}")


def ensure_openai(cfg: ExperimentConfig, n: int, cell: Path, log=print) -> dict:
    """An OpenAI cell's record: a fine-tuning job launched (or followed) for n > 0, the prompted model for n = 0."""

    inputs = openai_train_inputs(cfg, n)
    rec = completion.done(cell, inputs)
    if rec is not None:
        return rec
    completion.begin(cell)
    if n > 0:
        from .train import openai_ft

        state = openai_ft.launch(cfg, n, cell, yes=True, log=log)  # follows the job the folder names, if any
        return completion.finish(cell, "train", inputs, [TRAIN_METRICS], model=state["fine_tuned_model"])
    write_text(cell / "config.yaml", cfg.cell_yaml(0))
    return completion.finish(cell, "train", inputs, ["config.yaml"], model=cfg.openai.model)


def audit_cell(cell: Path, expected: dict[Path, str] | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """A cell's evaluation folders whose numbers may be shown, and the others with the reason.

    Shown: a valid completion record that names the cell's current training record, and, where
    `expected` gives the inputs digest the config asks for now (folder -> digest), those inputs. A
    record whose files were changed afterwards is refused outright: the folder was edited by hand."""
    from .errors import FtscaleError
    from .eval.evaluate import FAILED

    expected = expected or {}
    upstream = upstream_of(cell)
    train = completion.valid(cell)
    train_stale = cell in expected and (train is None or train["inputs_sha256"] != expected[cell])
    shown, hidden = [], []
    diverged = divergence.read(cell) if train is None else None
    if diverged is not None:  # no evaluation of it exists to show: the cell itself is listed, with the reason
        hidden.append((cell, divergence.reason(diverged)))
    for folder in sorted(p for p in cell.iterdir() if p.is_dir() and p.name.startswith(("eval-", "probes"))):
        rec = completion.read(folder)
        failed = completion.read(folder, FAILED)
        if rec is None:
            reason = (f"failed: {failed['failed'] + failed['judge_failed']} of {failed['n']} requests "
                      f"({failed['errors'][0]['error'] if failed['errors'] else 'no error text'})" if failed
                      else "unfinished: no completion record (interrupted, or made by an older ftscale)")
            hidden.append((folder, reason))
        elif completion.valid(folder) is None:
            raise FtscaleError(f"{folder}: its files are not the ones its completion record names (edited or "
                               "copied after the evaluation); re-run the evaluation (delete that folder) or restore them")
        elif train_stale or rec["upstream"] != upstream:
            hidden.append((folder, "stale: it evaluated a training that the current config no longer matches"))
        elif folder in expected and rec["inputs_sha256"] != expected[folder]:
            hidden.append((folder, "stale: made with other evaluation settings than the config asks for now"))
        else:
            shown.append(folder)
    return shown, hidden


def ensure_captured(cfg: ExperimentConfig, path: Path, model: str, cell: Path) -> dict:
    """A captured fine-tune's cell record: nothing is trained; it names the capture file, so a new
    capture redoes the cell's evaluations."""
    from .chatdata import sha256_file

    inputs = {"captured_sha256": sha256_file(path), "model": model}
    rec = completion.done(cell, inputs)
    if rec is not None:
        return rec
    completion.begin(cell)
    write_text(cell / "config.yaml", cfg.cell_yaml(0))
    return completion.finish(cell, "train", inputs, ["config.yaml"], model=model)
