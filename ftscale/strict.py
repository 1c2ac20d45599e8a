"""Config models that refuse unknown keys, and their loading from YAML with `file:line: key` errors.

Every YAML file the project reads (experiments, sweeps, tasks, personas, judge prompts, price
tables) is validated through `load_validated` into a `Strict` model, so a typo anywhere is
reported the same way, naming the file, the line and the key. Overlay files (a tune's best.yaml)
merge over a config before it is validated, and an error in a key one sets names that file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError
from .flags import canonical_key
from .yamlfile import load_yaml, parse_value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _spelled(key: str, node: dict) -> str:
    return key if key in node else canonical_key(key)


def apply_overrides(data: dict, overrides: dict[str, str]) -> set[str]:
    """Set dotted keys (`train.lora.r`) in a nested mapping; values are parsed as YAML. A key written with
    dashes (`--train.learning-rate`, as flags are) is the field with underscores, unless the mapping already
    holds it as written (a mapping's own keys, such as a price table's model names). Returns the dotted keys
    as set."""
    written = set()
    for dotted, raw in overrides.items():
        node, path = data, []
        *parents, last = dotted.split(".")
        for key in parents:
            path.append(_spelled(key, node))
            node = node.setdefault(path[-1], {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{dotted}: '{key}' is not a section of the config")
        if not last:
            raise ConfigError(f"--{dotted}: an override names a key, e.g. --train.seed 3")
        path.append(_spelled(last, node))
        node[path[-1]] = parse_value(raw) if isinstance(raw, str) else raw
        written.add(".".join(path))
    return written


def _field_names(model) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _field_names(field.annotation)
    return names


def _key_path(err: dict, names: set[str], lines: dict) -> tuple:
    """The config keys of an error's location, without the union members pydantic adds ('list[int]')."""
    if err["type"] == "extra_forbidden":
        return tuple(err["loc"])  # the last part is the user's unknown key
    out = []
    for part in err["loc"]:
        # a field name or a key of the file (a mapping's own keys, e.g. model names in a price table)
        if isinstance(part, str) and part not in names and (*out, part) not in lines:
            break
        out.append(part)
    return tuple(out)


def _source(loc: tuple, layers: list[tuple[Path, dict]]) -> str:
    """`file:line` of the deepest key of `loc` that a file sets; at one depth the last overlay wins, as in the merge."""
    for end in range(len(loc), 0, -1):
        for path, lines in reversed(layers):
            if loc[:end] in lines:
                return f"{path}:{lines[loc[:end]]}"
    return str(layers[0][0])


def _format_errors(layers: list[tuple[Path, dict]], err: ValidationError, overridden: set[str], model) -> str:
    """`layers`: (file, its key lines) of the config and then each overlay merged over it."""
    out, names = [], _field_names(model)
    known = {key for _, lines in layers for key in lines}
    for e in err.errors():
        loc = _key_path(e, names, known)
        key = ".".join(str(x) for x in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        source = f"--{key} (command line)" if key in overridden else _source(loc, layers)
        shown = e["type"] not in ("missing", "extra_forbidden") and not isinstance(e.get("input"), (dict, type(None)))
        detail = f" (got {e['input']!r})" if shown else ""
        out.append(f"{source}: {key}: {msg}{detail}")
    return "\n".join(out)


def merge_overlay(data: dict, overlay: dict) -> dict:
    """`overlay`'s keys set into `data`, section by section (a mapping merges, anything else replaces)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merge_overlay(data[key], value)
        else:
            data[key] = value
    return data


def load_validated(path: str | Path, model: type[BaseModel], overrides: dict[str, str] | None = None,
                   overlays: list[str | Path] | tuple = ()):
    """Load a YAML file, merge each overlay file over it in turn, then the dotted overrides, into `model`;
    raise ConfigError naming file (the overlay's, for a key it sets), line, key."""
    path = Path(path)
    data, lines = load_yaml(path)
    layers = [(path, lines)]
    for overlay in map(Path, overlays):
        extra, extra_lines = load_yaml(overlay)
        merge_overlay(data, extra)
        layers.append((overlay, extra_lines))
    return validated(path, data, lines, model, overrides, layers[1:])


def validated(path: Path, data: dict, lines: dict, model: type[BaseModel], overrides: dict[str, str] | None = None,
              overlays: list[tuple[Path, dict]] = ()):
    """`data` and `lines` as `load_yaml` read them from `path` (plus dotted overrides), validated into `model`;
    for a caller that reads the file's mapping itself, so that it is parsed once. `overlays`: the (file, key
    lines) of files already merged into `data`, so that an error in a key one sets names that file."""
    overridden = apply_overrides(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors([(path, lines), *overlays], e, overridden, model)) from None
