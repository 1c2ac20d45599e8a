"""OpenAI's shutdown dates (`configs/openai_deprecations.yaml`): when each base model, and every
fine-tune built on it, stops answering, and when fine-tuning jobs stop being accepted.

Loaded and validated like the price table (unknown keys refused, errors name file:line: key);
the table carries its `source` and the day it was `checked`, which every output prints.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field

from .paths import shipped
from .strict import Strict, load_validated

DEFAULT = "configs/openai_deprecations.yaml"


class FineTuningWindDown(Strict):
    never_fine_tuned_refused: dt.date = Field(description="organisations that never fine-tuned are refused from this day")
    inactive_refused: dt.date = Field(description="organisations without recent fine-tuned traffic refused from this day")
    inactive_days: int = Field(ge=1)
    last_job_day: dt.date = Field(description="after this day nobody can start a job")


class Shutdown(Strict):
    aliases: list[str] = Field(default_factory=list, description="dated ids of the same base model")
    shutdown: dt.date = Field(description="the day the model and its fine-tunes stop answering")


class DeprecationTable(Strict):
    checked: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")
    source: str
    fine_tuning: FineTuningWindDown
    shutdowns: dict[str, Shutdown]

    def base_of(self, model_id: str) -> str:
        """The base model of an id: `ft:gpt-4o-mini-2024-07-18:org::abc` -> `gpt-4o-mini-2024-07-18`."""
        return model_id.split(":")[1] if model_id.startswith("ft:") else model_id

    def shutdown(self, model_id: str) -> tuple[str, dt.date] | None:
        """(table key, shutdown day) of a model id or an `ft:` model's base; None when the table does not list it."""
        base = self.base_of(model_id)
        for key, entry in self.shutdowns.items():
            if base == key or base in entry.aliases:
                return key, entry.shutdown
        return None

    def shutdown_text(self, model_id: str, today: dt.date | None = None) -> str:
        """`2027-01-14 (in 46 days)`, `2026-10-23 (passed 37 days ago)` or `not listed`."""
        found = self.shutdown(model_id)
        if found is None:
            return "not listed"
        days = (found[1] - (today or dt.date.today())).days
        return f"{found[1]} ({'in %d days' % days if days >= 0 else 'passed %d days ago' % -days})"

    def provenance(self) -> str:
        return f"shutdown dates checked {self.checked}, source: {' '.join(self.source.split())}"


def load_deprecations(path: str | Path = DEFAULT) -> DeprecationTable:
    """A relative path is looked up from the working directory, then among the shipped files."""
    path = shipped(path)
    return load_validated(path, DeprecationTable)
