"""The command-line parser every ftscale command uses: each long flag in both spellings.

`--output-dir` and `--output_dir` are one flag, as in transformers' and TRL's parsers
(`--dataset_name, --dataset-name`), so a user never has to remember which command wants which.
Help lists the dashed spelling only; the other is accepted silently. Config overrides after a
command (`--train.learning-rate`) are normalised the same way in `ftscale/strict.py`.

Folders a command writes are named `--output-dir` everywhere; the older `--out` is still
accepted where a command took it (`hidden=`), so scripts written against it keep working.
Abbreviations are off: with two spellings a prefix would be ambiguous, and an abbreviated flag
could swallow a config override meant for the rest of the line.
"""

from __future__ import annotations

import argparse


def spellings(flag: str) -> list[str]:
    """`--output-dir` -> ['--output-dir', '--output_dir'] (a flag with neither character: itself)."""
    if not flag.startswith("--"):
        return [flag]
    body = flag[2:]
    return list(dict.fromkeys([flag, "--" + body.replace("_", "-"), "--" + body.replace("-", "_")]))


class Parser(argparse.ArgumentParser):
    """argparse's parser; every long option also answers to its other spelling, and to any `hidden`
    older names, without listing them in the help. (Arguments added to a group would not: none is.)"""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, hidden: tuple[str, ...] = (), **kwargs):
        action = super().add_argument(*names, **kwargs)
        for name in [*names, *hidden]:
            for alt in spellings(name):
                if alt not in self._option_string_actions:
                    self._option_string_actions[alt] = action
        return action


def canonical_key(key: str) -> str:
    """A config key as written after a command (`train.learning-rate`) -> its field name (`train.learning_rate`)."""
    return key.replace("-", "_")
