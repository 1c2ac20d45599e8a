"""The sweep's cell states: files in each cell's folder are the truth; results.db is an index of them.

Each cell's folder holds `cell.json` (running / failed / diverged, with host, pid, attempts and the
error, or for a diverged training the step, loss and knobs to turn) and,
once every step is done, `cell.done.json`: a completion record (ftscale/completion.py) naming the
cell's key, its training record and each evaluation record. A cell is done only while that record
still matches them. Jobs on several nodes write only their own cell's files (an atomic rename each),
so nothing shared is written concurrently. `results.db` is rebuilt from those files by the process
that reads them (the sweep loop, `--status`, the report) into a temporary file that is then renamed
over the old one: SQLite never runs a journal or a lock on the shared filesystem, where its own
documentation says WAL does not work.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

from . import completion
from .atomic import atomic_path, write_json

STATE = "cell.json"
DONE = "cell.done.json"
STATUSES = ("done", "running", "failed", "diverged", "pending")
# the statuses whose cell.json carries an error: what went wrong, for the report and --status
WITH_ERROR = ("failed", "diverged")

SCHEMA = """
CREATE TABLE cells (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, system TEXT NOT NULL, n INTEGER NOT NULL, seed INTEGER NOT NULL,
    epochs REAL NOT NULL, run_dir TEXT NOT NULL UNIQUE, config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
    error TEXT, attempts INTEGER NOT NULL, completions INTEGER NOT NULL,
    started REAL, finished REAL, duration_s REAL, host TEXT, pid INTEGER
)
"""


# -- the files: written by whichever process runs the cell ----------------------------------------
def _state(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def mark_running(run_dir: Path, key: str) -> None:
    prev = _state(run_dir)
    completion.begin(run_dir, DONE)
    write_json(Path(run_dir) / STATE, {"key": key, "status": "running", "attempts": prev.get("attempts", 0) + 1,
                                       "completions": prev.get("completions", 0), "started": time.time(),
                                       "host": socket.gethostname(), "pid": os.getpid(), "error": None})


def mark_failed(run_dir: Path, error: str, status: str = "failed") -> None:
    """`status`: failed, or diverged (the training was stopped by the divergence watchdog)."""
    state = _state(run_dir)
    write_json(Path(run_dir) / STATE, state | {"status": status, "error": error, "finished": time.time()})


def mark_done(run_dir: Path, key: str, steps: list[Path]) -> None:
    """The cell's completion record: its key, its training record and each evaluation record. The
    record decides; cell.json is updated after it for the people reading the folder."""
    run_dir = Path(run_dir)
    state = _state(run_dir)
    count = state.get("completions", 0) + 1
    rec = completion.finish(run_dir, "cell", {"key": key}, [], upstream=_step_records(run_dir, steps), name=DONE,
                            steps=[str(p.relative_to(run_dir)) for p in steps], completions=count)
    write_json(run_dir / STATE, state | {"status": "done", "error": None, "finished": rec["finished"], "completions": count})


def _step_records(run_dir: Path, steps: list[Path]) -> str:
    """One digest over the cell's training record and its evaluation records, as they are now."""
    records = [completion.valid(run_dir)] + [completion.valid(p) for p in steps]
    return completion.digest([r["record_sha256"] if r else None for r in records])


def _done_record(run_dir: Path, key: str) -> dict | None:
    rec = completion.read(run_dir, DONE)
    if rec is None or rec["inputs"].get("key") != key:
        return None
    steps = [Path(run_dir) / s for s in rec.get("steps", [])]
    return rec if rec["upstream"] == _step_records(Path(run_dir), steps) else None


def is_done(run_dir: Path, key: str) -> bool:
    return _done_record(run_dir, key) is not None


def cell_status(run_dir: Path, key: str) -> dict:
    """The cell's state from its files: done while its record holds; a `running` cell whose process
    is gone on this host was interrupted and counts as pending again."""
    state = _state(run_dir)
    if state.get("key") != key:
        state = {}
    done = _done_record(run_dir, key)
    status = "done" if done else state.get("status", "pending")
    if status == "done" and not done:
        status = "pending"  # cell.json says done but the record does not hold (a step was redone or edited)
    if status == "running" and state.get("host") == socket.gethostname() and not _alive(state.get("pid")):
        status = "pending"
    started, finished = state.get("started"), done["finished"] if done else state.get("finished")
    return {"status": status, "error": state.get("error") if status in WITH_ERROR else None,
            "attempts": state.get("attempts", 0),
            "completions": done["completions"] if done else state.get("completions", 0),
            "started": started, "finished": finished,
            "duration_s": finished - started if done and started and finished else None,
            "host": state.get("host"), "pid": state.get("pid")}


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the index ------------------------------------------------------------------------------------
class ResultsStore:
    """Read-only view of results.db; `rebuild` writes it anew from the cells' files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) if self.path.is_file() else None
        if self.db is not None:
            self.db.row_factory = sqlite3.Row

    @classmethod
    def rebuild(cls, path: str | Path, cells) -> "ResultsStore":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # an empty file is an empty database; renamed over the old one at the end
            db = sqlite3.connect(tmp)
            try:
                db.execute("PRAGMA journal_mode=OFF")  # a private temporary file: nothing to roll back
                db.execute(SCHEMA)
                for c in cells:
                    s = cell_status(c.run_dir, c.key)
                    db.execute("INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                               (c.key, c.kind, c.system, c.n, c.seed, c.epochs, str(c.run_dir), c.cfg.cell_yaml(c.n),
                                s["status"], s["error"], s["attempts"], s["completions"], s["started"], s["finished"],
                                s["duration_s"], s["host"], s["pid"]))
                db.commit()
            finally:
                db.close()
        return cls(path)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def all(self) -> list[dict]:
        return [] if self.db is None else [dict(r) for r in self.db.execute("SELECT * FROM cells ORDER BY rowid")]

    def get(self, key: str) -> dict | None:
        return next((r for r in self.all() if r["key"] == key), None)

    def summary(self, keys: list[str] | None = None) -> dict:
        wanted = None if keys is None else set(keys)
        rows = [r for r in self.all() if wanted is None or r["key"] in wanted]
        return {"counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES}, "rows": rows}

    def integrity(self) -> str:
        return "ok" if self.db is None else self.db.execute("PRAGMA integrity_check").fetchone()[0]
