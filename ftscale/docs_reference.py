"""The documentation's reference pages, generated from the code so that they cannot drift from it:
every config key from the pydantic models that validate the YAML files, every command and flag from
the parser `ftscale` itself uses (`ftscale.cli.build_parser`).

mkdocs builds them at build time (docs/hooks.py calls `pages()`); `python -m ftscale.docs_reference DIR`
writes them into DIR to read without mkdocs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

CONFIG_PAGE, COMMANDS_PAGE = "reference/config.md", "reference/commands.md"


def _models() -> list[tuple[str, str, type[BaseModel], str]]:
    """(title, anchor, model, where such a file lives and what reads it), in the page's order."""
    from ftscale.config import ExperimentConfig
    from ftscale.data.personas import Persona
    from ftscale.deprecations import DeprecationTable
    from ftscale.eval.judges import JudgePrompt
    from ftscale.eval.tasks.yaml_task import TaskSpec
    from ftscale.models import ModelSpec
    from ftscale.prices import PriceTable
    from ftscale.sweepconfig import SweepConfig
    from ftscale.tuneconfig import TuneConfig

    return [
        ("Experiment", "experiment", ExperimentConfig, "`configs/experiments/*.yaml`: `ftscale run`, `train`, `eval`, "
         "`bench`; any key is overridden after the command as `--section.key value`"),
        ("Sweep", "sweep", SweepConfig, "`configs/sweeps/*.yaml`: `ftscale sweep`"),
        ("Hyperparameter search", "tune", TuneConfig, "`configs/tune/*.yaml`: `ftscale tune`"),
        ("Task", "task", TaskSpec, "`configs/tasks/*.yaml`: named by an experiment's `task`; "
         "`ftscale task check` validates one"),
        ("Price table", "prices", PriceTable, "`configs/prices.yaml`, or your copy: `--prices FILE` or `cost.prices`"),
        ("Model", "model", ModelSpec, "`configs/models/*.yaml`: a model named by its file name"),
        ("Persona", "persona", Persona, "`configs/personas/*.yaml`: `ftscale distill --persona`"),
        ("Judge prompt", "judge", JudgePrompt, "`configs/judges/*.yaml`: the tone experiment's judges"),
        ("OpenAI shutdown dates", "deprecations", DeprecationTable, "`configs/openai_deprecations.yaml`"),
    ]


# ------------------------------------------------------------------------------------------ config keys

def _type_text(annotation) -> str:
    """A field's type as a reader wants it: `int | list[int]`, `hf | vllm`, `Path`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) if not isinstance(a, str) else a for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_text(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return f"dict[{_type_text(args[0])}, {_type_text(args[1])}]" if args else "dict"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return "mapping" if issubclass(annotation, BaseModel) else annotation.__name__
    return re.sub(r"\b(typing|pathlib)\.", "", str(annotation))


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(its keys' defaults)"
    if isinstance(value, Path):
        value = str(value)
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value}`"


def _nested(annotation) -> tuple[type[BaseModel], str] | None:
    """The model a field holds (directly, optional, or as list items or mapping values), with how its keys
    are written below the field's: `.`, `[].` or `.<name>.`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    if origin in (typing.Union, types.UnionType):
        for a in args:
            found = _nested(a)
            if found:
                return found
    if origin in (list, tuple) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]."
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<name>."
    return None


def config_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key a model accepts, nested ones under their dotted path."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        description = (field.description or "").strip()
        rows.append((key, _type_text(field.annotation), _default_text(field), description))
        inner = _nested(field.annotation)
        if inner is not None:
            rows += config_rows(inner[0], key + inner[1])
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if "\\|" not in text else text.replace("\n", " ")


def config_page() -> str:
    from ftscale.eval.evaluators import EVALUATORS

    out = ["# Config keys", "",
           "Every key of every YAML file ftscale reads, generated when the site is built from the pydantic models "
           "that validate those files (`ftscale/docs_reference.py`), so this page and the code cannot disagree. "
           "A key that is not listed is refused when the file is loaded, naming the file, the line and the key.", "",
           "On the command line, a key of the experiment is overridden after `run`, `train`, `eval` or `bench` as "
           "`--section.key value`, with dashes or underscores (`--train.learning-rate 1e-4`).", ""]
    out += [f"- [{title}](#{anchor})" for title, anchor, _, _ in _models()] + ["- [Evaluators](#evaluators)", ""]
    for title, anchor, model, where in _models():
        out += [f"## {title} {{#{anchor}}}", "", where + ".", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "A base class")):
            out += [" ".join(doc.split()), ""]
        out += _table(config_rows(model))
    out += ["## Evaluators {#evaluators}", "",
            "A task's `evaluators:` list; each entry is `type:` (one of these), an optional `name:` (its metrics' "
            "prefix) and the type's own keys:", ""]
    for name, ev in sorted(EVALUATORS.items()):
        rows = config_rows(ev.params)
        doc = " ".join((ev.params.__doc__ or "").split())
        out += [f"### `{name}`", ""] + ([doc, ""] if doc and rows else []) + (
            _table(rows) if rows else ["No keys of its own.", ""])
    return "\n".join(out) + "\n"


def _table(rows) -> list[str]:
    return (["| key | type | default | description |", "|---|---|---|---|"]
            + [f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(desc)} |" for k, t, d, desc in rows] + [""])


# -------------------------------------------------------------------------------------------- commands

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of each subcommand, in the order the parser lists them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return out


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{o}`" for o in a.option_strings) or f"`{a.metavar or a.dest}`"
        if a.option_strings and a.nargs != 0:
            name += f" `{a.metavar or a.dest.upper()}`"
        what = (a.help or "").replace("%(default)s", str(a.default))
        if a.choices and not isinstance(a, argparse._SubParsersAction):
            what += f" (one of: {', '.join(map(str, a.choices))})"
        if a.required and a.option_strings:
            what += " (required)"
        elif a.default not in (None, False, [], argparse.SUPPRESS) and a.option_strings:
            what += f" (default: `{a.default}`)"
        rows.append(f"| {name} | {_cell(what.strip())} |")
    return (["| argument | what |", "|---|---|", *rows, ""]) if rows else []


def _command(path: list[str], parser: argparse.ArgumentParser, helptext: str, level: int) -> list[str]:
    usage = " ".join(parser.format_usage().split())  # the subparser's prog is its whole path: ftscale data generate
    out = [f"{'#' * level} `ftscale {' '.join(path)}`", ""]
    out += [helptext.strip()[0].upper() + helptext.strip()[1:] + ".", ""] if helptext.strip() else []
    out += ["```", usage.removeprefix("usage: "), "```", ""]
    if parser.epilog:
        out += [" ".join(parser.epilog.split()), ""]
    out += _option_rows(parser)
    for name, sub, sub_help in _subcommands(parser):
        out += _command([*path, name], sub, sub_help, min(level + 1, 4))
    return out


def commands_page() -> str:
    from ftscale.cli import build_parser
    from ftscale.data.distill import build_parser as distill_parser

    top = build_parser()
    out = ["# Commands", "",
           "Every `ftscale` command with its arguments, generated when the site is built from the parser the "
           "command line itself uses (`ftscale.cli.build_parser`), so it cannot drift from `ftscale --help`.", "",
           "**One rule for flags:** every flag takes dashes or underscores (`--output-dir` or `--output_dir`), as "
           "transformers' and TRL's parsers do, and so do config overrides (`--train.learning-rate` or "
           "`--train.learning_rate`). The pages spell them with dashes. A folder a command writes is always "
           "`--output-dir`; the older `--out` is still accepted where a command took it. Abbreviated flags are "
           "not accepted. A price table of your own is `--prices FILE` on every command that prices something "
           "(`run`, `train`, `report`, `distill`).", "",
           "Exit codes are the same for every command: [exit codes](exit-codes.md).", ""]
    for name, sub, helptext in _subcommands(top):
        if name == "distill":  # a passthrough to its own parser, which `ftscale distill --help` shows
            sub = distill_parser()
        out += _command([name], sub, helptext, 2)
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """The generated pages: path under docs/ -> Markdown."""
    return {CONFIG_PAGE: config_page(), COMMANDS_PAGE: commands_page()}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "site-reference")
    for rel, text in pages().items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
        print(target / rel)


def on_files(files, config):
    """mkdocs hook: the generated pages join the site's files, as if they were under docs/."""
    from mkdocs.structure.files import File

    for rel, text in pages().items():
        files.append(File.generated(config, rel, content=text))
    return files
