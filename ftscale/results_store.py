"""The sweep's results store: one SQLite row per cell, keyed by the hash of its resolved config.

SQLite's transactions make every status change atomic, so a sweep killed at any moment leaves a
store that opens, and a resumed sweep finds each cell done, failed, or still to do. The run
directory is UNIQUE: two cells can never write to the same folder. Scheduler jobs (submitit)
meet here too, so the file must live on a filesystem with working locks.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    system TEXT NOT NULL,
    n INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    epochs REAL NOT NULL,
    run_dir TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    duration_s REAL,
    host TEXT,
    pid INTEGER
)
"""


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # explicit transactions below
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a finished cell survives a power cut, not only a kill
        self.db.execute(SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def _tx(self, sql: str, args: tuple = ()) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def register(self, cells) -> None:
        """Add the cells not yet known; known ones keep their status (that is what resuming means)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for c in cells:
                self.db.execute(
                    "INSERT OR IGNORE INTO cells (key, kind, system, n, seed, epochs, run_dir, config) VALUES (?,?,?,?,?,?,?,?)",
                    (c.key, c.kind, c.system, c.n, c.seed, c.epochs, str(c.run_dir), c.cfg.cell_yaml(c.n)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def start(self, key: str) -> None:
        self._tx("UPDATE cells SET status='running', attempts=attempts+1, started=?, error=NULL, host=?, pid=? "
                 "WHERE key=?", (time.time(), socket.gethostname(), os.getpid(), key))

    def done(self, key: str) -> None:
        now = time.time()
        self._tx("UPDATE cells SET status='done', completions=completions+1, finished=?, duration_s=?-started "
                 "WHERE key=? AND status!='done'", (now, now, key))

    def failed(self, key: str, error: str) -> None:
        self._tx("UPDATE cells SET status='failed', error=?, finished=?, duration_s=?-started WHERE key=?",
                 (error, time.time(), time.time(), key))

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT * FROM cells WHERE key=?", (key,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM cells ORDER BY rowid")]

    def summary(self, keys: list[str] | None = None) -> dict:
        wanted = None if keys is None else set(keys)
        rows = [r for r in self.all() if wanted is None or r["key"] in wanted]
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "running", "failed", "pending")}
        return {"counts": counts, "rows": rows}

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def export(self) -> str:
        return json.dumps(self.all(), indent=1)
