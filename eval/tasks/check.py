"""`ftscale task check <task>`: everything that can be wrong with a task, before any training.

Refused (errors): an unknown evaluator or a wrong parameter (file:line: key), an invalid JSON
Schema or regex, data that is missing or fails `data check` (file:line: reason), duplicated eval
ids, eval examples that also appear in the training pool, a reference field that an evaluator
needs and no eval example has (or, for an evaluator that needs it in every example, some example
lacks). Reported (warnings): a field that some examples lack (those are not scorable for that
metric, never counted right or wrong).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftscale.chatdata import read_jsonl
from ftscale.datacheck import check_file
from ftscale.errors import ConfigError, DataError

from . import get_task


def _prompt_key(rec: dict, normalise: bool) -> str:
    """What the model is asked: the non-assistant turns (for a training example, all but its answer)."""
    turns = [m for m in rec["messages"] if m["role"] != "assistant"]
    text = "\n".join(f"{m['role']}: {m['content']}" for m in turns if m["role"] != "system")
    return re.sub(r"\s+", " ", text).strip().casefold() if normalise else text


def overlap(train_path: Path, train: list[dict], eval_path: Path, evals: list[dict]) -> list[str]:
    """Eval examples whose question is also in the training pool, exactly or up to whitespace and case."""
    exact = {_prompt_key(r, False): i for i, r in enumerate(train, 1)}
    loose = {_prompt_key(r, True): i for i, r in enumerate(train, 1)}
    out = []
    for lineno, rec in enumerate(evals, 1):
        if (line := exact.get(_prompt_key(rec, False))) is not None:
            out.append(f"{eval_path}:{lineno}: eval example {rec['id']!r} is in the training pool ({train_path}:{line})")
        elif (line := loose.get(_prompt_key(rec, True))) is not None:
            out.append(f"{eval_path}:{lineno}: eval example {rec['id']!r} is in the training pool up to whitespace "
                       f"and case ({train_path}:{line})")
    return out


def refuse_overlap(train_path: Path, eval_path: Path) -> None:
    """What `ftscale run` checks for every task before training."""
    found = overlap(train_path, read_jsonl(train_path, "train"), eval_path, read_jsonl(eval_path, "eval"))
    if found:
        more = f"\n... and {len(found) - 10} more" if len(found) > 10 else ""
        raise DataError(f"the eval set overlaps the training pool ({len(found)} examples); a score on "
                        "examples the model was trained on measures memory, not the task:\n" + "\n".join(found[:10]) + more)


def refuse_missing_references(task, eval_path: Path, examples: list[dict]) -> None:
    """Before any generation: every reference is an object, and holds each field the task's evaluators
    need (where every example needs it), or some example holds it (where the others count as not scorable)."""
    for lineno, rec in enumerate(examples, 1):  # read_jsonl refuses empty lines: the index is the line
        if not isinstance(rec["reference"], dict):
            raise DataError(f"{eval_path}:{lineno}: 'reference' must be an object of the fields the evaluators read")
    for evaluator, needed, every in task.reference_needs:
        lacking = [i for i, rec in enumerate(examples, 1) if needed not in rec["reference"]]
        if lacking and (every or len(lacking) == len(examples)):
            more = f" (and {len(lacking) - 1} more examples)" if len(lacking) > 1 else ""
            raise DataError(f"{eval_path}:{lacking[0]}: reference lacks {needed!r} needed by evaluator "
                            f"{evaluator!r}{more}")


@dataclass
class TaskReport:
    task: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = f"task {self.task}: {'OK' if self.ok else f'{len(self.errors)} errors'}, {len(self.warnings)} warnings"
        return "\n".join([head, *self.profile, *(f"error: {e}" for e in self.errors),
                          *(f"warning: {w}" for w in self.warnings)])


def _ids(ids: list) -> str:
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


def _check_references(report: TaskReport, task, eval_path: Path, evals: list[dict]) -> None:
    """Each reference field an evaluator reads: in every eval example where it must be, else in some
    (the others are reported: not scorable for that evaluator); the labels a choice evaluator sees."""
    for name, needed, every in task.reference_needs:
        lacking = [r["id"] for r in evals if needed not in (r.get("reference") or {})]
        if len(lacking) == len(evals):
            report.errors.append(f"{eval_path}: evaluator {name!r} needs reference field {needed!r}, "
                                 "which no eval example has")
        elif lacking and every:
            report.errors.append(f"{eval_path}: evaluator {name!r} needs reference field {needed!r} in every eval "
                                 f"example; {len(lacking)} lack it ({_ids(lacking)})")
        elif lacking:
            report.warnings.append(f"{eval_path}: {len(lacking)} eval examples lack reference field {needed!r} "
                                   f"({_ids(lacking)}): {name!r} cannot score them; they are counted as not scorable")
    for evaluator, params, name in task.evaluators:
        if evaluator.name == "choice":
            counts = Counter(str((r.get("reference") or {}).get(params.field)) for r in evals)
            report.profile.append(f"labels of {name!r} in the eval set: "
                                  + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


def check_task(ref: str | Path, out_dir: Path = Path("runs") / "task-data") -> TaskReport:
    """Check a task (a name in configs/tasks/ or a path to its YAML) and its data. Config errors raise
    ConfigError (file:line: key); the rest is reported. Only a dataset is written, to out_dir."""
    try:
        task = get_task(str(ref))  # unknown keys, evaluators and their parameters: file:line: key
    except KeyError as e:
        raise ConfigError(f"{ref}: {e.args[0]}") from None
    report = TaskReport(task.name)
    try:
        train_path, eval_path = task.data.write("train", out_dir), task.data.write("eval", out_dir)
    except DataError as e:
        report.errors.append(str(e))
        return report
    evals = read_jsonl(eval_path, "eval")  # eval ids unique, lines valid
    check, train = None, []
    if train_path is not None:  # a probe set has no training pool
        check = check_file(train_path, min_examples=None)
        report.errors += check.errors
        train = read_jsonl(train_path, "train")
        report.errors += overlap(train_path, train, eval_path, evals)
    _check_references(report, task, eval_path, evals)

    t = check.tokens if check else None
    report.profile[:0] = [
        (f"training pool: {train_path} ({len(train)} examples)" if train_path else "training pool: none (asked only, "
         "e.g. as an experiment's eval.probes)") + f"; eval set: {eval_path} ({len(evals)} examples)",
        f"tokens per training example ({check.encoding}{', approximate' if check.approximate else ''}): "
        f"min {t.get('min')}, median {t.get('p50', 0):.0f}, max {t.get('max')}" if t else "tokens: -",
        f"eval prompts, characters: median {statistics.median(len(_prompt_key(r, False)) for r in evals):.0f}",
        f"prompt variants: {', '.join(task.prompt_variants)}; metrics: "
        + ", ".join(f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)" for m in task.metrics),
    ]
    return report
