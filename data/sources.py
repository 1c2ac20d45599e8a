"""Where a task's examples come from: a chat JSONL file, or a Hugging Face dataset whose columns are
mapped onto the chat format.

A dataset is written out once as chat JSONL (atomically) and then read back through the same
line-by-line checks as any file, so training, evaluation and OpenAI jobs all use one checked
file, and its sha256 goes into every run's provenance.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ftscale.atomic import write_jsonl
from ftscale.chatdata import read_jsonl
from ftscale.config import Strict
from ftscale.errors import ConfigError


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
    columns: Columns
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


def records_from_hub(src: HubSource, kind: str, where: str) -> list[dict]:
    """Chat records (train: messages ending with the answer; eval: messages, id, reference)."""
    ds = _load_dataset(src)
    wanted = {"columns.user": src.columns.user, "columns.system": src.columns.system, "columns.id": src.columns.id,
              "columns.assistant": src.columns.assistant}
    wanted |= {f"columns.reference.{k}": v for k, v in src.columns.reference.items()}
    for key, column in wanted.items():
        if column is not None and column not in ds.column_names:
            raise ConfigError(f"{where}.{key}: column {column!r} is not in the dataset "
                              f"(it has {', '.join(ds.column_names)})")
    if kind == "train" and src.columns.assistant is None:
        raise ConfigError(f"{where}.columns.assistant: the training pool needs the column holding the answer")
    rows = ds if src.limit is None else ds.select(range(min(src.limit, len(ds))))
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


def materialise(src: Path | HubSource, kind: str, out_path: Path, where: str) -> Path:
    """A JSONL source as it is; a dataset written to `out_path` as chat JSONL. Either way checked."""
    if isinstance(src, HubSource):
        write_jsonl(out_path, records_from_hub(src, kind, where))
        src = out_path
    read_jsonl(src, kind)  # every line checked now, `file:line: reason`
    return Path(src)
