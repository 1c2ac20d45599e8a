"""Provenance reads the checkout's commit without writing to the repository: a run killed while
`git status` held .git/index.lock would leave the user's repository locked for every git command."""

from __future__ import annotations

import subprocess
import time

from ftscale import paths, provenance


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_the_commit_is_read_without_touching_the_index(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("a\n")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-qm", "first")
    time.sleep(1.1)
    (repo / "f.txt").touch()  # stat data changed: a plain `git status` now rewrites the index, under its lock
    index = repo / ".git" / "index"
    before = (index.stat().st_ino, index.stat().st_mtime_ns)
    monkeypatch.setattr(paths, "ROOT", repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit() == head  # same content: not dirty
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == before
    (repo / "f.txt").write_text("b\n")
    assert provenance.git_commit() == head + "+dirty"
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == before
