"""Personas for the tone task: who the customer-service agent is meant to sound like.

A persona is a YAML file in `configs/personas/` (or anywhere, given by path):

    name: rude                  # [a-z0-9_-]; the stem of its file in configs/personas/
    description: one line
    teacher_prompt: |           # the system prompt the TEACHER model gets when distilling replies:
      ...                       #   the tone in detail, and that the problem must still be solved
    system_prompt: ...          # the SHORT system prompt the student sees in training and evaluation data
    judge_rubric: |             # what a judge looks for: the tone, in words
      ...
    lexical:                    # optional: word lists of the HEURISTIC lexical baseline (eval/lexical_tone.py);
      tone_markers: [...]       #   without it the baseline counts its rude-vs-polite defaults
      opposite_markers: [...]

Unknown keys are refused and every error names the file, the line and the key.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, field_validator

from ftscale import paths
from ftscale.errors import ConfigError
from ftscale.strict import Strict, load_validated
from ftscale.yamlfile import load_yaml

PERSONAS_DIR = paths.CONFIGS / "personas"
SYSTEM_PROMPT_MAX_CHARS = 300  # the student's prompt stays short: the tone must be learned, not prompted


class Lexical(Strict):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    tone_markers: list[str] = Field(min_length=1, description="words/phrases typical of the persona's tone")
    opposite_markers: list[str] = Field(min_length=1, description="words/phrases typical of the opposite tone")

    @field_validator("tone_markers", "opposite_markers")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not m for m in v):
            raise ValueError("markers must be non-empty strings")
        return v


class Persona(Strict):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(min_length=1, description="one line")
    teacher_prompt: str = Field(min_length=1, description="system prompt of the teacher model when distilling")
    system_prompt: str = Field(min_length=1, max_length=SYSTEM_PROMPT_MAX_CHARS,
                               description="the short system prompt of the student's training and eval data")
    judge_rubric: str = Field(min_length=1, description="what a judge should look for: the tone, in words")
    lexical: Lexical | None = Field(None, description="marker lists of the HEURISTIC lexical baseline")

    @field_validator("description")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v:
            raise ValueError("must be one line")
        return v


REQUIRED = tuple(name for name, f in Persona.model_fields.items() if f.is_required())
_SECTIONS = {"lexical": Lexical}  # nested mappings whose required keys are checked the same way


def list_personas() -> list[str]:
    """Names of the personas in configs/personas/."""
    return sorted(p.stem for p in PERSONAS_DIR.glob("*.yaml"))


def persona_path(name_or_path: str | Path) -> Path:
    """A persona's YAML: a name in configs/personas/ or a path to a file."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or "/" in text or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: persona file not found")
        return path
    path = PERSONAS_DIR / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(list_personas()) or "none"
        raise ConfigError(f"unknown persona {text!r}; available: {known}, or a path to a persona YAML")
    return path


def load_persona(name_or_path: str | Path) -> Persona:
    """Load and validate a persona; raise ConfigError naming the file, the line and the key."""
    path = persona_path(name_or_path)
    data, lines = load_yaml(path)
    # A missing key has no line of its own: the error points at the mapping that lacks it.
    errors = [f"{path}:{min(lines.values()) if lines else 1}: {k}: required key is missing "
              f"(a persona has {', '.join(REQUIRED)}; lexical is optional)" for k in REQUIRED if k not in data]
    for key, model in _SECTIONS.items():
        if isinstance(data.get(key), dict):
            need = [k for k, f in model.model_fields.items() if f.is_required() and k not in data[key]]
            errors += [f"{path}:{lines.get((key,), 1)}: {key}.{k}: required key is missing" for k in need]
    if errors:
        raise ConfigError("\n".join(errors))
    return load_validated(path, Persona)
