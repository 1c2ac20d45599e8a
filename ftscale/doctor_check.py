"""One check of `ftscale doctor`: its status, the figures it measured and the fix. The environment
checks (ftscale/doctor.py) and the GPU checks (train/doctor_gpu.py) both make them."""

from __future__ import annotations

import importlib.util
import traceback
from dataclasses import dataclass, field

OK, MISSING, BROKEN, SKIPPED = "ok", "missing", "broken", "skipped"


@dataclass
class Check:
    name: str
    status: str  # ok / missing / broken / skipped
    measured: dict = field(default_factory=dict)
    fix: str = ""
    group: str = "environment"
    required: bool = True  # a required check that is not ok fails the command

    @property
    def failed(self) -> bool:
        return self.required and self.status in (MISSING, BROKEN)


def guarded(name: str, group: str, fn) -> list[Check]:
    """Run a group of checks; a crash becomes a broken check with its traceback in the JSON, so
    the figures measured before it, and the checks after it, are kept."""
    try:
        return fn()
    except Exception as e:
        return [Check(name, BROKEN, {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()},
                      "a crash, not a measurement: its traceback is in the JSON", group=group)]


def has_module(name: str) -> bool:
    """Installed, without importing it (torch may be missing, and imports cost seconds)."""
    return importlib.util.find_spec(name) is not None
