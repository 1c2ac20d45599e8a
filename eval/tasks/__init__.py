"""The task registry: a task is a YAML file, named in configs/tasks/ or given by its path."""

from __future__ import annotations

from dataclasses import replace

from ftscale import paths

from ..task_types import Metric, Task
from .yaml_task import find_task_file, task_from_file

# Metric and Task (eval/task_types.py) are what tasks are made of: importable with the registry
__all__ = ["Metric", "Task", "get_task", "with_judge"]


def with_judge(task: Task, judge: str) -> Task:
    """The task with the model of every judge (judge evaluators, pairwise judgements) replaced by `judge`."""
    judges = tuple((e, params.model_copy(update={"judge": judge}), prefix) for e, params, prefix in task.judges)
    pairwise = task.pairwise.model_copy(update={"judge": judge}) if task.pairwise is not None else None
    return replace(task, judges=judges, pairwise=pairwise)


def get_task(name: str) -> Task:
    """A task YAML in configs/tasks/ by name, or a path to a task YAML; KeyError naming the shipped ones."""
    path = find_task_file(name)
    if path is None:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(paths.shipped_names('tasks'))}, "
                       "or a path to a task YAML")
    return task_from_file(path)
