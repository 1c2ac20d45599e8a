"""Where a task's examples come from: a chat JSONL file, or a Hugging Face dataset whose columns are
mapped onto the chat format; a training pool may also be in another format (data/formats.py).

A dataset, or a training file in another format, is written out once as chat JSONL (atomically) and
then read back through the same line-by-line checks as any file, so training, evaluation and OpenAI
jobs all use one checked file, and its sha256 goes into every run's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from ftscale import paths
from ftscale.atomic import write_jsonl
from ftscale.chatdata import read_jsonl
from ftscale.errors import ConfigError, DataError
from ftscale.strict import Strict

from .formats import CANONICAL, convert_file, convert_record


class Columns(Strict):
    """Which column holds what; `reference` maps each reference field to its column."""

    user: str = Field(description="the user's message")
    assistant: str | None = Field(None, description="the answer (needed for the training pool)")
    system: str | None = Field(None, description="a system prompt per row (else `system_prompt`)")
    id: str | None = Field(None, description="the example's id (else its row number)")
    reference: dict[str, str] = Field(default_factory=dict, description="reference field -> column")


class HubSource(Strict):
    """A dataset `datasets` can load: a hub id, a builder with data files (`parquet` + `data_files`),
    or a folder written by `save_to_disk`."""

    path: str
    name: str | None = Field(None, description="the dataset's configuration")
    data_files: str | list[str] | None = None
    split: str = "train"
    columns: Columns | None = Field(None, description="how the rows map onto chat; none: each row is a record of "
                                                      "the task's data.format (a training pool only)")
    system_prompt: str | None = Field(None, description="the same system prompt for every row")
    limit: int | None = Field(None, ge=1, description="the first N rows only")


def _load_dataset(src: HubSource):
    try:
        import datasets
    except ImportError:
        raise ConfigError("a Hugging Face dataset source needs `datasets`: pip install datasets") from None
    local = Path(src.path)
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise ConfigError(f"split {src.split!r} is not in {local} (it has {', '.join(ds)})")
            ds = ds[src.split]
        return ds
    return datasets.load_dataset(src.path, src.name, data_files=src.data_files, split=src.split)


def records_from_hub(src: HubSource, kind: str, where: str, fmt: str = CANONICAL) -> list[dict]:
    """Chat records (train: messages ending with the answer; eval: messages, id, reference); rows without
    a column mapping are training records of format `fmt`."""
    ds = _load_dataset(src)
    rows = ds if src.limit is None else ds.select(range(min(src.limit, len(ds))))
    if src.columns is None:
        return [convert_record(fmt, dict(row), f"{where}: row {i + 1}") for i, row in enumerate(rows)]
    wanted = {"columns.user": src.columns.user, "columns.system": src.columns.system, "columns.id": src.columns.id,
              "columns.assistant": src.columns.assistant}
    wanted |= {f"columns.reference.{k}": v for k, v in src.columns.reference.items()}
    for key, column in wanted.items():
        if column is not None and column not in ds.column_names:
            raise ConfigError(f"{where}.{key}: column {column!r} is not in the dataset "
                              f"(it has {', '.join(ds.column_names)})")
    if kind == "train" and src.columns.assistant is None:
        raise ConfigError(f"{where}.columns.assistant: the training pool needs the column holding the answer")
    out = []
    for i, row in enumerate(rows):
        system = row[src.columns.system] if src.columns.system else src.system_prompt
        messages = ([{"role": "system", "content": str(system)}] if system else []) + [
            {"role": "user", "content": str(row[src.columns.user])}]
        if kind == "train":
            out.append({"messages": messages + [{"role": "assistant", "content": str(row[src.columns.assistant])}]})
        else:
            reference = {field: row[col] for field, col in src.columns.reference.items()}
            if src.columns.assistant:
                reference.setdefault("answer", row[src.columns.assistant])
            out.append({"messages": messages, "id": str(row[src.columns.id]) if src.columns.id else f"{src.split}-{i}",
                        "reference": reference})
    return out


def materialise(src: HubSource, kind: str, out_path: Path, where: str, fmt: str = CANONICAL) -> Path:
    """A dataset written to `out_path` as chat JSONL (atomically), then checked like any file."""
    write_jsonl(out_path, records_from_hub(src, kind, where, fmt))
    read_jsonl(out_path, kind)  # every line checked now, `file:line: reason`
    return Path(out_path)


def _source(value: Path | dict | None) -> Path | HubSource | None:
    """A `data` entry of a task file: a dataset's mapping, or a path (the user's, else a shipped file)."""
    if value is None:
        return None
    return HubSource.model_validate(value) if isinstance(value, dict) else paths.shipped(value)


@dataclass(frozen=True)
class TaskData:
    """The examples a task file names, resolved with the task: for the training pool and the eval set,
    a chat JSONL file or a dataset (no training pool: a probe set is only asked); the training pool
    may be in another format. Naming the files writes nothing; a dataset, or a training file in
    another format, is written out by whoever first needs its file (`write`)."""

    task: str  # the task's name: its datasets are written to <out_dir>/<task>/<kind>.jsonl
    where: str  # the task file, for messages: `<where>: data.<kind>`
    train: Path | HubSource | None
    eval: Path | HubSource
    format: str = CANONICAL  # the training pool's (data/formats.py); an eval set is always chat JSONL
    # the dataset files written so far (path -> path): each once, however many callers need it
    _written: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, task: str, where: str, train: Path | dict | None, eval: Path | dict,
           format: str = CANONICAL) -> "TaskData":
        """From a task file's `data` section."""
        return cls(task, where, _source(train), _source(eval), format)

    def is_written(self, kind: str) -> bool:
        """Whether the chat JSONL of `kind` is written by `write`: a dataset's, or a training file's in another format."""
        src = getattr(self, kind)
        return isinstance(src, HubSource) or (src is not None and kind == "train" and self.format != CANONICAL)

    def file(self, kind: str, out_dir: Path) -> Path | None:
        """The chat JSONL of `kind` (None: no training pool): a file as named, every line checked
        (`file:line: reason`); for a dataset or a file in another format, where `write` writes it
        (nothing is written here)."""
        src = getattr(self, kind)
        if src is None:
            return None
        if isinstance(src, Path) and not src.is_file():
            raise DataError(f"{self.where}: data.{kind}: {src}: file not found")
        if self.is_written(kind):
            return Path(out_dir) / self.task / f"{kind}.jsonl"
        read_jsonl(src, kind)
        return src

    def write(self, kind: str, out_dir: Path) -> Path | None:
        """`file`, with a dataset (or a file in another format) written there first (atomically, once)
        and checked like any file."""
        path = self.file(kind, out_dir)
        if self.is_written(kind) and path not in self._written:
            src, where = getattr(self, kind), f"{self.where}: data.{kind}"
            self._written[path] = (materialise(src, kind, path, where, self.format) if isinstance(src, HubSource)
                                   else convert_file(src, self.format, path))
        return path
