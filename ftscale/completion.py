"""Completion records: a step (a training, an evaluation) is done only when its record says so.

The record is written last, atomically, into the step's folder. It names the SHA-256 of exactly the
inputs that produced the step (`inputs`), the record of the step it builds on (`upstream`: an
evaluation names its training), and the SHA-256 of each file it wrote. A step is reused only when
all three still match; anything else is redone. A step that is started again first removes its old
record, so a run killed half-way never leaves a record beside outputs it did not make, and a failed
step never writes one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from .atomic import write_json
from .chatdata import sha256_file

RECORD = "completion.json"


def digest(obj) -> str:
    """The SHA-256 of a JSON-able value, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def read(folder: str | Path, name: str = RECORD) -> dict | None:
    try:
        return json.loads((Path(folder) / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _outputs_intact(folder: Path, outputs: dict[str, str]) -> bool:
    return all((folder / rel).is_file() and sha256_file(folder / rel) == sha for rel, sha in outputs.items())


def valid(folder: str | Path, name: str = RECORD) -> dict | None:
    """The record if every file it names is still exactly what the step wrote, else None."""
    rec = read(folder, name)
    if rec is None or not _outputs_intact(Path(folder), rec.get("outputs", {})):
        return None
    return rec


def done(folder: str | Path, inputs: dict, upstream: str | None = None, name: str = RECORD) -> dict | None:
    """The record of a step made from exactly these inputs (and this upstream record), else None."""
    rec = valid(folder, name)
    if rec is None or rec.get("inputs_sha256") != digest(inputs) or rec.get("upstream") != upstream:
        return None
    return rec


def begin(folder: str | Path, name: str = RECORD) -> None:
    """A step starts (again): whatever it finished before no longer counts."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(folder) / name)


def finish(folder: str | Path, step: str, inputs: dict, outputs: list[str], upstream: str | None = None,
           name: str = RECORD, **extra) -> dict:
    """Write the record, last: `outputs` are paths relative to `folder`, hashed as they are now."""
    folder = Path(folder)
    rec = {"step": step, "inputs_sha256": digest(inputs), "upstream": upstream, "inputs": inputs,
           "outputs": {rel: sha256_file(folder / rel) for rel in sorted(outputs)}, "finished": time.time(), **extra}
    rec["record_sha256"] = digest({k: v for k, v in rec.items() if k != "finished"})
    write_json(folder / name, rec)
    return rec


def files_under(folder: str | Path, sub: str) -> list[str]:
    """Every file below `folder/sub`, relative to `folder` (an adapter directory's files)."""
    base = Path(folder)
    return sorted(str(p.relative_to(base)) for p in (base / sub).rglob("*") if p.is_file())
