"""`ftscale bench main-job`: an earlier revision installed from git and this checkout, run back to back."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ftscale import allocator

from conftest import BIN, MAIN_CONFIG, ROOT


def _bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ftscale"), "bench", "main-job", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=os.environ | (env or {}))


IMPORTS = "FTSCALE_TEST_BASELINE_IMPORTS"
# appended to the baseline revision's ftscale/__init__.py: each process that imports that ftscale says so
RECORDER = f"""
import os as _os  # tests/test_bench_main_job.py: where this revision's ftscale was imported from
if _os.environ.get({IMPORTS!r}):
    import json as _json, sys as _sys
    with open(_os.environ[{IMPORTS!r}], "a") as _f:
        _f.write(_json.dumps({{"file": __file__, "python": _sys.executable, "argv": _sys.orig_argv}}) + "\\n")
"""


def _marked_revision(tmp_path: Path) -> tuple[str, dict]:
    """A revision only this test has: a commit on HEAD that adds RECORDER to ftscale/__init__.py (no other
    change). Its git objects go into a folder of the test's own, git reading the checkout's through
    `alternates`, so the checkout's repository is not written to (no object, no ref). Returns the commit's
    hash and the environment under which git (the bench's too) finds it."""
    objects = tmp_path / "git-objects"
    objects.mkdir()
    repo_objects = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-path", "objects"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    env = os.environ | {"GIT_OBJECT_DIRECTORY": str(objects), "GIT_ALTERNATE_OBJECT_DIRECTORIES": repo_objects,
                        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost", "GIT_COMMITTER_NAME": "test",
                        "GIT_COMMITTER_EMAIL": "test@localhost"}

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, env=env, capture_output=True, text=True,
                              check=True).stdout

    blob = git("hash-object", "-w", "--stdin", stdin=git("show", "HEAD:ftscale/__init__.py") + RECORDER).strip()
    package = re.sub(r"^(100644 blob )[0-9a-f]+(\t__init__\.py)$", rf"\g<1>{blob}\g<2>", git("ls-tree", "HEAD:ftscale"),
                     count=1, flags=re.M)
    top = re.sub(r"^(040000 tree )[0-9a-f]+(\tftscale)$", rf"\g<1>{git('mktree', stdin=package).strip()}\g<2>",
                 git("ls-tree", "HEAD"), count=1, flags=re.M)
    commit = git("commit-tree", git("mktree", stdin=top).strip(), "-p", "HEAD", "-m", "HEAD, its imports recorded")
    return commit.strip(), {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}


def test_the_baseline_runs_its_own_revision_from_its_own_environment_with_the_same_answers(embedded_model, tmp_path):
    out, imports = tmp_path / "bench", tmp_path / "imports.jsonl"
    revision, git_env = _marked_revision(tmp_path)
    proc = _bench("--baseline", revision, "--config", MAIN_CONFIG, "--output-dir", str(out), "--num_train_examples",
                  "[0]", "--eval.limit", "4", "--eval.max_new_tokens", "16", "--eval.baseline_variants", "[]",
                  env=git_env | {IMPORTS: str(imports)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "main-job.json").read_text())
    # the baseline's run imported the named revision (only it records), from the fresh environment the bench
    # made for it, not from this checkout; this code's run imported this checkout (which does not record)
    records = [json.loads(line) for line in imports.read_text().splitlines()] if imports.is_file() else []
    runs = [r for r in records if "run" in r["argv"] and any(a.endswith("-baseline") for a in r["argv"])]
    assert runs, f"no process imported the baseline revision {revision} to run it: {records}"
    assert not [r for r in records if any(a.endswith("-this") for a in r["argv"])], records
    for r in runs:
        venv = Path(r["python"]).parent.parent
        assert venv.name == "venv" and venv.parent.name.startswith("ftscale-baseline-"), r
        assert Path(r["file"]).is_relative_to(venv) and not Path(r["file"]).is_relative_to(ROOT), r
        assert r["argv"][:4] == [r["python"], "-P", "-m", "ftscale"], r
    assert result["baseline"] == revision and result["baseline_s"] > 0 and result["this_s"] > 0
    assert result["speedup"] == pytest.approx(result["baseline_s"] / result["this_s"], abs=0.02)  # both rounded
    assert f"speedup {result['speedup']:.2f}x" in proc.stdout
    # both are this code, which preloads tcmalloc itself where it is installed (the CI's setup installs it)
    assert result["allocator"]["baseline"] == result["allocator"]["this"] == allocator.in_effect({})
    (row,) = result["rows"]
    assert row["row"]["prompt_variant"] == "default" and (row["identical_answers"], row["examples"]) == (4, 4)
    assert row["baseline"] == row["this"] and "format_ok" in row["this"]
    # each side ran from its own empty folder, the baseline from the installed revision
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert [r.rsplit("-", 1)[1] for r in runs] == ["baseline", "this"]
    assert "ftscale-baseline-" in proc.stdout and "/venv/bin/python -P -m ftscale run" in proc.stdout


def test_an_unknown_revision_is_refused_before_any_run(tmp_path):
    proc = _bench("--baseline", "no-such-revision", "--output-dir", str(tmp_path / "bench"))
    assert proc.returncode != 0
    assert "--baseline no-such-revision:" in proc.stderr
    assert not (tmp_path / "bench").exists() or not any((tmp_path / "bench").iterdir())
