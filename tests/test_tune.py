"""`ftscale tune` on the embedded model: a tiny real search killed with SIGKILL in its second trial and
resumed to exactly its 4 trials (the finished one not redone, the interrupted one run again), its best
configuration written as an overlay that `ftscale run` and a sweep take; a diverging trial pruned by the
watchdog; the eval set refused as the objective, an unknown metric and an unknown overlay key refused."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from ftscale.chatdata import read_jsonl
from ftscale.cli import build_parser
from ftscale.config import load_config
from ftscale.errors import ConfigError, StepsFailed
from ftscale.eval.tasks import get_task
from ftscale.eval.tasks.check import refuse_missing_references
from ftscale.sweepconfig import load_sweep
from ftscale.tune import MAX_RETRIES, as_eval_example, carve, open_study, prepare, requeue_interrupted, run_tune
from ftscale.tune_report import HISTORY, IMPORTANCES, write_plots
from ftscale.tuneconfig import Validation, load_tune

from conftest import BIN, MAIN_CONFIG, ROOT

EVAL_FILE = ROOT / "data" / "formatting" / "eval.jsonl"
TRAIN_FILE = ROOT / "data" / "formatting" / "train.jsonl"


def _tune(tmp_path, name="tiny", **changes):
    """A tune config: 4 trials of a 4-example, one-step training, scored on 4 held-out examples."""
    spec = {"name": name, "base": str(MAIN_CONFIG),
            "overrides": {"train.max_length": 128, "eval.max_new_tokens": 8, "eval.batch_size": 4},
            "num_train_examples": 4, "validation": {"size": 4, "seed": 0}, "objective": {"metric": "format_ok"},
            "n_trials": 4, "sampler": "tpe", "seed": 0,
            "search_space": {"learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}, "epochs": [1],
                             "batch_size": [4], "lora": {"r": [4, 8]}},
            "output_dir": str(tmp_path / "tune")} | changes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, tmp_path / "tune" / name


def _kill_when_second_trial_starts(path, tune_dir) -> None:
    """`ftscale tune`, SIGKILLed (no chance to clean up) once the second trial's cell folder appears: the
    first trial is then finished and the second running."""
    tune_dir.parent.mkdir(parents=True, exist_ok=True)
    log = tune_dir.parent / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ftscale"), "tune", str(path)], cwd=ROOT, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while len(list((tune_dir / "trials").glob("*"))) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _study(tune_dir, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tune_dir / 'optuna.db'}")


def test_a_killed_search_resumes_to_its_trials_and_writes_an_overlay_run_and_sweep_take(embedded_model, tmp_path):
    path, tune_dir = _tune(tmp_path)
    _kill_when_second_trial_starts(path, tune_dir)
    before = _study(tune_dir).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_cell = Path(before[0].user_attrs["cell"])
    stamps = {p: p.stat().st_mtime_ns for p in first_cell.rglob("completion.json")}
    assert len(stamps) == 2  # its training and its evaluation

    best = run_tune(path)  # resumed: the interrupted trial failed and run again, then the rest

    trials = _study(tune_dir).trials
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[0].datetime_complete == before[0].datetime_complete  # the finished trial is not redone
    assert {p: p.stat().st_mtime_ns for p in first_cell.rglob("completion.json")} == stamps
    retried = trials[2]
    assert retried.system_attrs["failed_trial"] == 1 and retried.params == trials[1].params
    assert all(0.0 <= t.value <= 1.0 for t in trials if t.state == TrialState.COMPLETE)
    # run again: nothing left to do
    run_tune(path)
    assert len(_study(tune_dir).trials) == 5

    report = (tune_dir / "report.md").read_text()
    assert "| 1 | fail |" in report and report.count("| complete |") == 4 and "the eval set is never used" in report
    assert (tune_dir / HISTORY).is_file()
    # the overlay: only the tuned keys, the best trial's values; `ftscale run` and a sweep apply it
    chosen = _study(tune_dir).best_trial.params
    overlay = yaml.safe_load(best.read_text())
    assert best == tune_dir / "best.yaml" and set(overlay) == {"train"}
    assert overlay["train"]["learning_rate"] == chosen["train.learning_rate"]
    cfg = load_config(MAIN_CONFIG, {"train.seed": "3"}, overlays=[best])
    assert (cfg.train.learning_rate, cfg.train.lora.r, cfg.train.seed) == (
        chosen["train.learning_rate"], chosen["train.lora.r"], 3)
    assert cfg.train.lora.alpha == load_config(MAIN_CONFIG).train.lora.alpha  # keys it does not set stay
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": str(MAIN_CONFIG), "overlays": [str(best)],
                                     "systems": [{"name": "lora", "model": "smollm2-135m"}]}))
    assert load_sweep(sweep)[1].train.learning_rate == chosen["train.learning_rate"]


@pytest.mark.parametrize("direction, values", [("maximize", [0.25, 0.75, 0.5, 0.0]),
                                               ("minimize", [0.5, 0.25, 0.75, 1.0])])
def test_the_overlay_is_the_best_trial_neither_the_first_nor_the_last(embedded_model, tmp_path, direction, values):
    """Finished trials whose values are known, put into the search's own study (as trials a search run earlier
    left), the best the second of four, the others worse in both directions: `ftscale tune` has no trial
    left to run and writes the report and best.yaml, which must hold the second trial's values."""
    path, tune_dir = _tune(tmp_path, n_trials=4, objective={"metric": "format_ok", "direction": direction})
    study = open_study(prepare(*load_tune(path)), log=print)
    space = {"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True),
             "train.epochs": optuna.distributions.CategoricalDistribution([1]),
             "train.batch_size": optuna.distributions.CategoricalDistribution([4]),
             "train.lora.r": optuna.distributions.CategoricalDistribution([4, 8])}
    trials = [{"train.learning_rate": lr, "train.epochs": 1, "train.batch_size": 4, "train.lora.r": r}
              for lr, r in ((1e-4, 4), (5e-4, 8), (1e-3, 4), (2e-4, 4))]
    for params, value in zip(trials, values):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))

    best = run_tune(path)  # nothing left to run

    assert len(_study(tune_dir).trials) == 4  # no trial was trained
    assert yaml.safe_load(best.read_text()) == {"train": {"learning_rate": 5e-4, "epochs": 1, "batch_size": 4,
                                                          "lora": {"r": 8}}}
    assert "(trial 1)" in best.read_text() and "**Best: trial 1**" in (tune_dir / "report.md").read_text()


def test_a_trial_the_watchdog_stops_is_pruned_never_scored(embedded_model, tmp_path):
    # 4 examples in batches of 2 at lr 1e3: the second logged loss is many times the first
    path, tune_dir = _tune(tmp_path, name="diverging", n_trials=1,
                           overrides={"train.max_length": 128, "train.watchdog.early_steps": 1,
                                      "train.watchdog.patience": 1},
                           search_space={"learning_rate": [1000.0], "batch_size": [2]})
    with pytest.raises(StepsFailed, match="every one was pruned"):
        run_tune(path)
    (trial,) = _study(tune_dir, "diverging").trials
    assert trial.state == TrialState.PRUNED and trial.value is None
    assert "training diverged at step" in trial.user_attrs["diverged"]
    assert "| 0 | pruned |" in (tune_dir / "report.md").read_text()
    assert not (tune_dir / "best.yaml").exists()


def test_the_eval_set_is_refused_as_the_objective(tmp_path):
    path, _ = _tune(tmp_path, validation={"file": str(EVAL_FILE)})
    with pytest.raises(ConfigError, match=r"validation.file: .* is the experiment's eval set .*Carve the validation"):
        run_tune(path)
    # a file sharing questions with the eval set is refused too
    copied = tmp_path / "val.jsonl"
    copied.write_text("".join(EVAL_FILE.read_text().splitlines(keepends=True)[5:8]))
    path, _ = _tune(tmp_path, validation={"file": str(copied)})
    with pytest.raises(ConfigError, match=r"shares 3 question\(s\) with the experiment's eval set"):
        run_tune(path)


def test_an_unknown_metric_or_key_is_refused_with_file_and_line(tmp_path):
    path, _ = _tune(tmp_path, objective={"metric": "format_okay"})
    with pytest.raises(ConfigError, match=rf"{path}:\d+: objective.metric: 'format_okay' is not a metric of task "
                                          r"'formatting' \(its metrics: format_ok, answer_correct, both\)"):
        run_tune(path)
    path, _ = _tune(tmp_path, search_space={"lora": {"rank": [4]}})
    with pytest.raises(ConfigError, match=rf"{path}:\d+: search_space.lora.rank: unknown key"):
        run_tune(path)
    path, _ = _tune(tmp_path, validation={"size": 4, "fraction": 0.1})
    with pytest.raises(ConfigError, match="give exactly one of fraction, size or file"):
        run_tune(path)


def test_an_overlay_is_validated_like_the_config_naming_its_own_file_and_line(tmp_path):
    bad = tmp_path / "best.yaml"
    bad.write_text("train:\n  learning_rate: 1.0e-4\n  lora:\n    rr: 4\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:4: train.lora.rr: unknown key$"):
        load_config(MAIN_CONFIG, overlays=[bad])
    bad.write_text("train:\n  epochs: -1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:2: train.epochs: Input should be greater than 0"):
        load_config(MAIN_CONFIG, overlays=[bad])
    # the last overlay wins, an override wins over both; `ftscale run` takes them before its overrides
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("train: {learning_rate: 1.0e-4, seed: 5}\n")
    two.write_text("train: {learning_rate: 3.0e-4}\n")
    cfg = load_config(MAIN_CONFIG, {"train.seed": "7"}, overlays=[one, two])
    assert (cfg.train.learning_rate, cfg.train.seed) == (3e-4, 7)
    args, rest = build_parser().parse_known_args(["run", "x.yaml", "--overlay", str(one), "--overlay", str(two),
                                                  "--train.seed", "7"])
    assert args.overlay == [one, two] and rest == ["--train.seed", "7"]


def test_a_folder_holding_another_search_is_refused_and_more_trials_continue_it(tmp_path):
    path, tune_dir = _tune(tmp_path)
    open_study(prepare(*load_tune(path)), log=print)
    path, _ = _tune(tmp_path, n_trials=9)  # more trials: the same search, continued
    open_study(prepare(*load_tune(path)), log=print)
    path, _ = _tune(tmp_path, search_space={"learning_rate": [1e-4, 2e-4]})
    with pytest.raises(ConfigError, match=f"{tune_dir}: holds the trials of a search whose config"):
        open_study(prepare(*load_tune(path)), log=print)


def test_trials_left_running_or_stopped_by_ctrl_c_are_queued_again_a_bounded_number_of_times():
    study = optuna.create_study()
    running = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # a killed search's trial
    stopped = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # one stopped by Ctrl-C
    stopped.set_user_attr("interrupted", stopped.number)
    study.tell(stopped, state=TrialState.FAIL)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), state=TrialState.FAIL)  # an error
    requeue_interrupted(study, log=print)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 2
    assert [t.params for t in study.trials[3:]] == [running.params, stopped.params]
    requeue_interrupted(study, log=print)  # queued once, not again
    assert len(study.trials) == 5
    for _ in range(MAX_RETRIES + 1):  # the same values interrupted every time: given up after MAX_RETRIES retries
        study.ask()
        requeue_interrupted(study, log=print)
    assert sum(t.params == running.params for t in study.trials) == MAX_RETRIES + 1


def test_the_validation_split_is_carved_from_the_pool_and_scores_like_eval_examples():
    pool = read_jsonl(TRAIN_FILE, "train")[:40]
    rest, held = carve(pool, Validation(size=10, seed=3), 30, "tune.yaml")
    assert len(rest) == 30 and len(held) == 10 and carve(pool, Validation(size=10, seed=3), 30, "t")[1] == held
    prompts = {str(r["messages"][:-1]) for r in rest}
    assert not any(str(e["messages"]) in prompts for e in held)  # train and validation never overlap
    example = as_eval_example(pool[0], "pool-00001")
    assert example["messages"] == pool[0]["messages"][:-1]
    assert example["reference"]["answer"] == "Cambodia"
    assert example["reference"]["gold"] == pool[0]["messages"][-1]["content"]
    refuse_missing_references(get_task("formatting"), TRAIN_FILE, held)  # what the formatting evaluators read
    with pytest.raises(ConfigError, match="holding out 15 leaves 25, and num_train_examples is 30"):
        carve(pool, Validation(fraction=0.375), 30, "tune.yaml")


def test_the_shipped_search_prepares_by_name(tmp_path):
    tune, at = load_tune("formatting-cpu")
    search = prepare(tune.model_copy(update={"output_dir": tmp_path}), at)
    assert (search.metric, search.direction, len(search.examples)) == ("both", "maximize", 40)
    assert len(search.pool) + 40 == len(read_jsonl(TRAIN_FILE, "train"))
    assert read_jsonl(tmp_path / "formatting-cpu" / "validation.jsonl", "eval") == search.examples


def test_the_report_plots_importances_once_there_are_enough_trials(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 10 + t.suggest_int("r", 4, 32) / 100,
                   n_trials=8)
    assert write_plots(study, tmp_path) == [HISTORY, IMPORTANCES]
    assert (tmp_path / HISTORY).stat().st_size > 1000 and (tmp_path / IMPORTANCES).stat().st_size > 1000
