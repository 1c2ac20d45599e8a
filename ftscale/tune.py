"""`ftscale tune`: a hyperparameter search (Optuna) over an experiment's training knobs at one training
size, scored on a validation split carved from the training pool, never on the eval set.

Each trial is one cell trained and evaluated by the cell runner (ftscale/cellrunner.py) with the trial's
values set over the experiment, so a trial trains exactly as `ftscale run` would. Optuna's study lives in
<tune folder>/optuna.db: a killed search run again continues, the trial it was in the middle of failed
and queued again (Optuna's RetryHeartbeatStaleTrialCallback). A training the divergence watchdog stops is a
pruned trial, never a score. The best trial's values are written as an overlay (best.yaml) that
`ftscale run --overlay` and a sweep's `overlays:` take.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .apikey import mask
from .atomic import write_jsonl, write_text
from .cellrunner import ensure_trained, eval_jobs, hf_answerer, run_evals
from .chatdata import read_jsonl, sha256_file, sha256_records
from .claims import Claim
from .completion import digest
from .config import ExperimentConfig, load_config
from .errors import ConfigError, DataError, StepsFailed
from .eval.evaluate import SCORES
from .eval.tasks.check import overlap, refuse_missing_references, refuse_overlap
from .experiment import task_for
from .models import check_for_training
from .rundir import read_json
from .strict import apply_overrides
from .train.divergence import Diverged
from .train.tracking import check_installed
from .tune_report import write_report
from .tuneconfig import FloatRange, IntRange, TuneConfig, Validation, load_tune

VALIDATION = "validation.jsonl"  # the validation split, as the trials' eval file
TRAIN_POOL = "train-pool.jsonl"  # the training pool less the validation split: what subsets are drawn from
BEST = "best.yaml"
MAX_RETRIES = 2  # an interrupted trial is run again at most this often (a trial that kills the process each time)


@dataclass(frozen=True)
class Search:
    """What every trial shares: the experiment as tuned, its task, the objective and the data."""

    tune: TuneConfig
    base: ExperimentConfig
    task: object
    variant: str  # the prompt variant the objective is measured with
    metric: str
    direction: str
    pool: list[dict]
    examples: list[dict]
    fixed: dict  # the overrides of every trial's config

    @property
    def dir(self) -> Path:
        return self.tune.tune_dir


def as_eval_example(record: dict, example_id: str) -> dict:
    """A training example as an eval example: its prompt (every turn but the answer), and the answer as the
    reference: `gold`, plus, when the answer is a JSON object, its fields (what a JSON task's evaluators read)."""
    answer = record["messages"][-1]["content"]
    try:
        parsed = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        parsed = None
    fields = parsed if isinstance(parsed, dict) else {}
    return {"id": example_id, "messages": record["messages"][:-1], "reference": {"gold": answer, **fields}}


def carve(pool: list[dict], validation: Validation, n: int, where: str) -> tuple[list[dict], list[dict]]:
    """(the pool less the validation split, the split as eval examples): a seeded draw; the two never overlap."""
    k = validation.size if validation.size is not None else round(validation.fraction * len(pool))
    if k < 1 or len(pool) - k < n:
        raise ConfigError(f"{where}: validation: the training pool holds {len(pool)} examples; holding out {k} "
                          f"leaves {len(pool) - k}, and num_train_examples is {n}")
    order = list(range(len(pool)))
    random.Random(validation.seed).shuffle(order)
    held = set(order[:k])
    rest = [rec for i, rec in enumerate(pool) if i not in held]
    return rest, [as_eval_example(pool[i], f"pool-{i + 1:05d}") for i in sorted(held)]


def _own_validation(path: Path, base: ExperimentConfig, where: str) -> list[dict]:
    """A validation file of the user's own: refused if it is (or shares a question with) the eval set."""
    examples = read_jsonl(path, "eval")
    evals = read_jsonl(base.data.eval, "eval")
    same = Path(path).resolve() == Path(base.data.eval).resolve() or sha256_file(path) == sha256_file(base.data.eval)
    shared = overlap(base.data.eval, evals, path, examples)
    if same or shared:
        what = ("is the experiment's eval set" if same
                else f"shares {len(shared)} question(s) with the experiment's eval set")
        raise ConfigError(f"{where}: validation.file: {path} {what} ({base.data.eval}); the search would pick the "
                          "configuration that scores best on the very set it is judged on. Carve the validation "
                          "from the training pool instead (validation.fraction or validation.size)"
                          + (f":\n{shared[0]}" if shared and not same else ""))
    refuse_overlap(base.data.train, path)  # a validation question trained on measures memory
    return examples


def _metric(tune: TuneConfig, task, at) -> tuple[str, str]:
    metrics = {m.name: m for m in task.metrics}
    name = tune.objective.metric or (task.headline[0] if task.headline else task.metrics[0].name)
    if name not in metrics:
        raise ConfigError(f"{at('objective', 'metric')}: objective.metric: {name!r} is not a metric of task "
                          f"{task.name!r} (its metrics: {', '.join(metrics)})")
    return name, tune.objective.direction or ("maximize" if metrics[name].higher_is_better else "minimize")


def prepare(tune: TuneConfig, at) -> Search:
    """The experiment as tuned, the objective, and the data files every trial reads, written to the tune folder."""
    base = load_config(tune.base, dict(tune.overrides))
    check_installed(base.train.trackers)
    variant = base.eval.prompt_variants[0]
    task = task_for(base, [variant])  # writes the datasets the experiment takes from its task
    metric, direction = _metric(tune, task, at)
    pool = read_jsonl(base.data.train, "train")
    if tune.validation.file is None:
        pool, examples = carve(pool, tune.validation, tune.num_train_examples, at("validation"))
    else:
        examples = _own_validation(tune.validation.file, base, at("validation", "file"))
    val_path = write_jsonl(tune.tune_dir / VALIDATION, examples)
    pool_path = write_jsonl(tune.tune_dir / TRAIN_POOL, pool)
    try:
        refuse_missing_references(task, val_path, examples)
    except DataError as e:
        if tune.validation.file is not None:
            raise
        raise ConfigError(f"{e}\nthe validation split's references are the training pool's answers (as `gold`, and "
                          f"a JSON answer's fields), which lack what task {task.name!r} scores with: give a "
                          "validation set of your own (validation.file)") from None
    fixed = dict(tune.overrides) | {
        "name": "trials", "output_dir": str(tune.tune_dir), "num_train_examples": tune.num_train_examples,
        # the pool was written as chat JSONL whatever the base's data.format
        "data.train": str(pool_path), "data.format": "openai_chat", "data.eval": str(val_path), "eval.limit": None,
        "eval.prompt_variants": [variant],
        "eval.baseline_variants": [], "eval.temperatures": [], "eval.probes": None}
    return Search(tune, base, task, variant, metric, direction, pool, examples, fixed)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """The trial's value of every searched key (its dotted experiment key)."""
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec, IntRange):
            out[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.log)
        else:
            assert isinstance(spec, FloatRange)
            out[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return out


def run_trial(search: Search, trial: optuna.Trial, log=print) -> float:
    """Train and evaluate one cell with the trial's values; its objective value. The cell is named by those
    values, so a trial run again (or a repeated suggestion) reuses what was already trained and evaluated."""
    params = suggest(trial, search.tune.search_space.params())
    cfg = load_config(search.tune.base, search.fixed | params)
    cell = search.dir / "trials" / digest(params)[:12]
    trial.set_user_attr("cell", str(cell))
    try:
        ensure_trained(cfg, search.tune.num_train_examples, cell, log=log)
    except Diverged as e:  # the watchdog stopped it: pruned, never scored
        trial.set_user_attr("diverged", str(e))
        raise optuna.TrialPruned(str(e)) from None
    answerer = hf_answerer(cfg, cell / "adapter")
    jobs = eval_jobs(cfg, cell, search.task, search.pool, search.examples, [search.variant], answerer)
    failures = run_evals(cell, jobs, answerer, search.pool, cfg.eval.few_shot_k, log=log)
    if failures:
        raise StepsFailed("; ".join(f.line() for f in failures))
    metrics = read_json(jobs[0].out_dir / SCORES)["metrics"]
    trial.set_user_attr("metrics", metrics)
    if metrics.get(search.metric) is None:
        raise StepsFailed(f"{cell}: {search.metric} could not be scored on any validation example")
    return metrics[search.metric]


def _held(tune_dir: Path) -> Claim:
    """One search at a time per folder (a dead process's claim is taken over: ftscale/claims.py), so that a
    trial found running at start-up is known to be an interrupted one."""
    return Claim(tune_dir, "ftscale tune")


def requeue_interrupted(study: optuna.Study, log=print) -> None:
    """Trials a killed search left running (and ones stopped by Ctrl-C): failed, and their values queued again
    (Optuna's RetryHeartbeatStaleTrialCallback, which records the trials it retries in `retry_history`)."""
    with warnings.catch_warnings():  # Optuna marks the callback experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    queued = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING:
            t = study.tell(t.number, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL or t.user_attrs.get("interrupted") != t.number or t.number in queued:
            continue
        before = len(study.trials)
        retry(study, t)  # not after MAX_RETRIES tries of the same values
        again = "its values queued again" if len(study.trials) > before else f"its values tried {MAX_RETRIES + 1} times"
        log(f"trial {t.number} was interrupted: marked failed, {again}")


def _objective(search: Search, log):
    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(search, trial, log)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Optuna marks it failed; the next run queues its values again
            # its number: a retry inherits the attributes of the trial it retries
            trial.set_user_attr("interrupted", trial.number)
            raise
        except Exception as e:  # Optuna marks it failed and goes on; the report shows why
            # masked (a provider's error may quote the key): Optuna stores this text and logs the exception it gets
            error = mask(f"{type(e).__name__}: {e}")
            trial.set_user_attr("error", error)
            raise StepsFailed(error) from None
    return objective


def open_study(search: Search, log=print) -> optuna.Study:
    """The search's study, created or continued; refused when the folder holds a search of another config."""
    tune = search.tune
    fingerprint = digest({"tune": tune.model_dump(mode="json", exclude={"n_trials", "output_dir"}),
                          "base": search.base.cell_yaml(tune.num_train_examples), "metric": search.metric,
                          "direction": search.direction, "pool": sha256_records(search.pool),
                          "validation": sha256_records(search.examples)})
    storage = optuna.storages.RDBStorage(f"sqlite:///{(search.dir / 'optuna.db').resolve()}")
    study = optuna.create_study(storage=storage, study_name=tune.name, direction=search.direction, load_if_exists=True)
    known = study.user_attrs.get("config_sha256")
    if known is None:
        study.set_user_attr("config_sha256", fingerprint)
    elif known != fingerprint:
        raise ConfigError(f"{search.dir}: holds the trials of a search whose config (or experiment, or data) has "
                          "changed since; give the tune another name, or delete the folder to start over")
    requeue_interrupted(study, log)
    # seeded by how far the search has come, so a continued search does not repeat its first suggestions
    seed = tune.seed + len(study.trials)
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if tune.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    return study


def finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def write_best(search: Search, study: optuna.Study) -> Path | None:
    """best.yaml: the best trial's values as nested experiment keys, for `ftscale run --overlay`."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    tree: dict = {}
    apply_overrides(tree, dict(best.params))  # dotted keys -> the nested sections of a config file
    head = (f"# The best of {len(finished(study))} trials of `ftscale tune` {search.tune.name}: {search.metric} = "
            f"{best.value:.4g} on the validation split (trial {best.number}).\n"
            f"#   ftscale run {search.tune.base} --overlay {search.dir / BEST}\n")
    path = write_text(search.dir / BEST, head + yaml.safe_dump(tree, sort_keys=False))
    load_config(search.tune.base, overlays=[path])  # what `ftscale run --overlay` will read
    return path


def _logged(search: Search, log):
    def callback(study: optuna.Study, trial) -> None:
        value = f"{search.metric}={trial.value:.3f}" if trial.value is not None else trial.state.name.lower()
        values = ", ".join(f"{k}={v:g}" for k, v in trial.params.items())
        log(f"trial {trial.number} ({values}): {value}; {len(finished(study))} of {search.tune.n_trials} finished")
        write_report(study, search)
    return callback


def run_tune(ref: str | Path, log=print) -> Path:
    """Run (or continue) the search to n_trials finished trials; write the report and best.yaml."""
    tune, at = load_tune(ref)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is logged below, with its values
    with _held(tune.tune_dir):
        search = prepare(tune, at)
        check_for_training(search.base)  # the model, its chat template and LoRA targets: before the first trial
        study = open_study(search, log)
        left = tune.n_trials - len(finished(study))
        if left < tune.n_trials:
            log(f"continuing {tune.name}: {tune.n_trials - left} of {tune.n_trials} trials finished")
        failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if left > 0:
            # one failed trial (an evaluation error, memory) does not stop the others, as in a sweep
            study.optimize(_objective(search, log), n_trials=left, catch=(Exception,), callbacks=[_logged(search, log)])
        report = write_report(study, search, plots=True)
        best = write_best(search, study)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - failed_before
    log(f"{report}" + (f"; best configuration: {best}" if best else ""))
    if failed or best is None:
        raise StepsFailed(f"{failed} trial(s) failed (the report lists why); run the same command again to run more"
                          if failed else "no trial completed: every one was pruned (diverged); the report lists them")
    return best
