"""The dated price table (`configs/prices.yaml`): OpenAI token prices and local machines per hour.

Loaded and validated like every config (unknown keys refused, errors name file:line: key). Wherever a
price is used, its age and its source are printed with it (`age`, `PriceTable.provenance`): prices
change, and a figure without its date reads as today's.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from pydantic import Field

from .errors import ConfigError
from .paths import shipped
from .strict import Strict, load_validated

DATE = r"^\d{4}-\d{2}(-\d{2})?$"
# older than this, a printed price says to re-check it
STALE_MONTHS = 6
OWN_FILE = "give your own file with --prices FILE (or cost.prices in the experiment)"


def months_old(checked: str, today: _dt.date | None = None) -> int:
    """Whole months from `checked` (YYYY-MM or YYYY-MM-DD) to today; a month-only date counts from its first day."""
    today = today or _dt.date.today()
    year, month, *day = (int(x) for x in checked.split("-"))
    months = (today.year - year) * 12 + today.month - month
    return max(0, months - (1 if day and today.day < day[0] else 0))


def age(checked: str, today: _dt.date | None = None, dated: bool = True) -> str:
    """'checked 2025-06, 18 months ago (on 2026-12-07)': the date a price was read and how old it is now
    (`dated`: with the day "now" was)."""
    today = today or _dt.date.today()
    n = months_old(checked, today)
    ago = "this month" if n == 0 else f"{n} month{'s' if n != 1 else ''} ago"
    return f"checked {checked}, {ago}" + (f" (on {today.isoformat()})" if dated else "")


class TokenPrices(Strict):
    """USD per 1M tokens."""

    input: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0, description="absent: cached input is billed as input")
    output: float = Field(ge=0)

    def per_request(self, input_tokens: float, output_tokens: float, cached_fraction: float = 0.0) -> float:
        cached = self.cached_input if self.cached_input is not None else self.input
        fresh = input_tokens * (1 - cached_fraction)
        return (fresh * self.input + input_tokens * cached_fraction * cached + output_tokens * self.output) / 1e6


class ModelPrices(TokenPrices):
    aliases: list[str] = Field(default_factory=list, description="other names of the model (gpt-4.1 for the dated id)")
    training: float | None = Field(None, ge=0, description="USD per 1M trained tokens; absent: not fine-tunable")
    fine_tuned: TokenPrices | None = Field(None, description="inference prices of its fine-tunes")
    source: str
    checked: str = Field(pattern=DATE)


class MachinePrice(Strict):
    hourly_usd: float = Field(gt=0)
    match: list[str] = Field(default_factory=list, description="substrings of the GPU name that pick this entry")
    description: str
    source: str
    checked: str = Field(pattern=DATE)


class PriceTable(Strict):
    currency: str
    checked: str = Field(pattern=DATE, description="when the table was last checked; shown in every report")
    openai: dict[str, ModelPrices]
    local_hardware: dict[str, MachinePrice]

    def model(self, name: str) -> tuple[str, ModelPrices, bool] | None:
        """(table key, prices, is a fine-tune) for a model id, an alias or an `ft:` model; None if unknown."""
        fine_tuned = name.startswith("ft:")
        base = name.split(":")[1] if fine_tuned else name
        for key, prices in self.openai.items():
            if base == key or base in prices.aliases:
                return key, prices, fine_tuned
        return None

    def inference(self, name: str) -> TokenPrices | None:
        found = self.model(name)
        if found is None:
            return None
        _, prices, fine_tuned = found
        return prices.fine_tuned if fine_tuned else prices

    def entry(self, key: str) -> ModelPrices | MachinePrice | None:
        return self.openai.get(key) or self.local_hardware.get(key)

    def provenance(self, path: str | Path, used: list[str] = (), today: _dt.date | None = None) -> str:
        """The sentence printed wherever prices are used: the file, the table's date and age, and for each
        entry used (a model or machine key) its price, source and date. Reused by every report."""
        today = today or _dt.date.today()
        stale = months_old(self.checked, today) > STALE_MONTHS
        text = (f"Prices: `{path}`, {age(self.checked, today)}"
                + (f": older than {STALE_MONTHS} months, re-check them before you spend, or {OWN_FILE}." if stale
                   else f"; to use others, {OWN_FILE}."))
        sources = []
        for key in dict.fromkeys(used):
            e = self.entry(key)
            if isinstance(e, MachinePrice):
                sources.append(f"{key} ${e.hourly_usd:.2f}/h: {e.source} ({age(e.checked, today, dated=False)})")
            elif e is not None:
                sources.append(f"{key} ${e.input:g} / ${e.output:g} per 1M input / output tokens"
                               + (f", fine-tuned ${e.fine_tuned.input:g} / ${e.fine_tuned.output:g}" if e.fine_tuned
                                  else "") + (f", training ${e.training:g} per 1M" if e.training is not None else "")
                               + f": {e.source} ({age(e.checked, today, dated=False)})")
        return text + (" Sources: " + "; ".join(sources) + "." if sources else "")

    def machine(self, hardware: str, gpu_name: str | None) -> tuple[str, MachinePrice]:
        """The entry named by `hardware`, or for `auto` the one whose `match` is in the GPU's name (else cpu)."""
        if hardware != "auto":
            if hardware not in self.local_hardware:
                raise ConfigError(f"cost.hardware: {hardware!r} is not in the price table "
                                  f"(it has {', '.join(self.local_hardware)})")
            return hardware, self.local_hardware[hardware]
        if gpu_name:
            for key, entry in self.local_hardware.items():
                if any(m.lower() in gpu_name.lower() for m in entry.match):
                    return key, entry
            raise ConfigError(f"cost.hardware: no price-table entry matches the GPU {gpu_name!r}; "
                              "name one with cost.hardware or give cost.hourly_usd")
        if "cpu" not in self.local_hardware:
            raise ConfigError("cost.hardware: the price table has no `cpu` entry for a machine without a GPU")
        return "cpu", self.local_hardware["cpu"]


def load_prices(path: str | Path) -> PriceTable:
    """A relative path is looked up from the working directory, then among the shipped files (configs/...)."""
    path = shipped(path)
    return load_validated(path, PriceTable)
