"""The study's vote store, `votes.db` (SQLite): one row per (study, pair, rater) vote.

The UNIQUE constraint keeps a rater's first vote on a pair and refuses any later one."""

from __future__ import annotations

import datetime as _dt
import sqlite3
from pathlib import Path

VOTES_DB = "votes.db"
CHOICES = ("A", "B", "tie")

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    study TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')),
    created TEXT NOT NULL,
    UNIQUE (study, pair_id, rater)
)
"""

# the server's connections wait longer for a lock than the owner's one-off reads
_SERVER_TIMEOUT = 30
_READ_TIMEOUT = 10


def timestamp() -> str:
    """Now, in UTC to the second: when a study was built or a vote cast."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def count_votes(db: Path) -> int:
    """How many votes the database holds (0 when there is none yet)."""
    if not db.is_file():
        return 0
    conn = sqlite3.connect(db, timeout=_READ_TIMEOUT)
    try:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def read_votes(study_dir: Path, study: dict) -> list[tuple[str, str, str]]:
    """(pair_id, rater, choice) of this study's votes on its pairs, in the order they were cast."""
    db = study_dir / VOTES_DB
    if not db.is_file():
        return []
    ids = {p["id"] for p in study["pairs"]}
    conn = sqlite3.connect(db, timeout=_READ_TIMEOUT)
    try:
        rows = conn.execute("SELECT pair_id, rater, choice FROM votes WHERE study = ? ORDER BY rowid",
                            (study["name"],)).fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        conn.close()
    return [r for r in rows if r[0] in ids]


def create_store(db: Path) -> None:
    """The votes table, created if missing."""
    conn = sqlite3.connect(db, timeout=_SERVER_TIMEOUT)
    try:
        conn.execute(SCHEMA)
        conn.commit()
    finally:
        conn.close()


def voted_pairs(db: Path, study_name: str, rater: str) -> set[str]:
    """The ids of the pairs `rater` has voted on."""
    conn = sqlite3.connect(db, timeout=_SERVER_TIMEOUT)
    try:
        rows = conn.execute("SELECT pair_id FROM votes WHERE study = ? AND rater = ?",
                            (study_name, rater)).fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def raters(db: Path, study_name: str) -> set[str]:
    """The names that have voted in the study."""
    conn = sqlite3.connect(db, timeout=_SERVER_TIMEOUT)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT rater FROM votes WHERE study = ?", (study_name,))}
    finally:
        conn.close()


def record_vote(db: Path, study_name: str, pair_id: str, rater: str, choice: str) -> bool:
    """Store the vote; False (nothing stored) when `rater` has already voted on the pair."""
    conn = sqlite3.connect(db, timeout=_SERVER_TIMEOUT)
    try:
        with conn:
            conn.execute("INSERT INTO votes (study, pair_id, rater, choice, created) VALUES (?, ?, ?, ?, ?)",
                         (study_name, pair_id, rater, choice, timestamp()))
    except sqlite3.IntegrityError:
        return False
    finally:
        conn.close()
    return True
