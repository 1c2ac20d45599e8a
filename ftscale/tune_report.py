"""The report of a hyperparameter search (<tune folder>/report.md): every trial with its values, score and
state, the best one, and Optuna's own plots (optimisation history; parameter importances once there are
enough completed trials) beside it as PNG.
"""

from __future__ import annotations

import warnings

# matplotlib (through Optuna's plots) is imported at the top: this module is reached only when a search runs
import matplotlib
from matplotlib import pyplot as plt
from optuna.exceptions import ExperimentalWarning
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from .atomic import atomic_path, write_text

HISTORY = "optimization_history.png"
IMPORTANCES = "param_importances.png"
# importances from fewer completed trials say more about the sampler's luck than about the parameters
MIN_TRIALS_FOR_IMPORTANCES = 8


def _save(ax, path) -> None:
    fig = ax.figure
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_plots(study, out_dir) -> list[str]:
    """Optuna's plots of the study that have something to show; the names of the files written."""
    matplotlib.use("Agg")  # files only, never a window
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _plots(study, out_dir)


def _plots(study, out_dir) -> list[str]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    written = []
    if completed:
        _save(optuna_plots.plot_optimization_history(study), out_dir / HISTORY)
        written.append(HISTORY)
    varied = any(len({repr(t.params.get(key)) for t in completed}) > 1 for key in study.best_trial.params) \
        if completed else False  # importances of values that never changed are noise
    if len(completed) >= MIN_TRIALS_FOR_IMPORTANCES and varied:
        # PED-ANOVA: Optuna's own evaluator that needs no scikit-learn (the default fANOVA does)
        ax = optuna_plots.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        _save(ax, out_dir / IMPORTANCES)
        written.append(IMPORTANCES)
    return written


def _value(t) -> str:
    return f"{t.value:.4f}" if t.value is not None else "–"


def _why(t) -> str:
    """What stopped a trial that has no score (the watchdog's verdict, the error it failed with), or whose
    values it retries."""
    if t.user_attrs.get("diverged") or t.user_attrs.get("error"):
        text = t.user_attrs.get("diverged") or t.user_attrs["error"]
    elif t.state == TrialState.FAIL:
        text = "interrupted (killed or stopped)"
    elif "failed_trial" in t.system_attrs:
        text = f"the values of interrupted trial {t.system_attrs['failed_trial']}, run again"
    else:
        text = ""
    return text.splitlines()[0].replace("|", "/") if text else ""


def trial_table(study, keys: list[str], metric: str) -> list[str]:
    lines = [f"| trial | state | {metric} | " + " | ".join(keys) + " | note |",
             "|---:|---|---:|" + "---:|" * len(keys) + "---|"]
    for t in study.get_trials(deepcopy=False):
        values = " | ".join(f"{t.params[k]:g}" if k in t.params else "" for k in keys)
        lines.append(f"| {t.number} | {t.state.name.lower()} | {_value(t)} | {values} | {_why(t)} |")
    return lines


def write_report(study, search, plots: bool = False):
    """report.md in the search's folder (after every trial; with the plots at the end of a run)."""
    tune, keys = search.tune, list(search.tune.search_space.params())
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lines = [f"# Hyperparameter search: {tune.name}", "",
             f"Experiment `{tune.base}` at {tune.num_train_examples} training examples; objective: "
             f"{search.direction} `{search.metric}` (prompt variant `{search.variant}`) on {len(search.examples)} "
             "validation examples held out of the training pool (the eval set is never used). "
             f"Sampler: {tune.sampler} (seed {tune.seed}).", ""]
    if completed:
        best = study.best_trial
        values = ", ".join(f"`{k}` = {v:g}" for k, v in best.params.items())
        lines += [f"**Best: trial {best.number}**, {search.metric} = {best.value:.4f}: {values}. "
                  "Its overlay: `best.yaml` (`ftscale run <experiment> --overlay best.yaml`).", ""]
    lines += trial_table(study, keys, search.metric) + [""]
    if plots:
        lines += [f"![{name[:-4]}]({name})" for name in write_plots(study, search.dir)] + [""]
    return write_text(search.dir / "report.md", "\n".join(lines))
