"""`ftscale bench main-job`: an earlier revision installed from git and this checkout, run back to back."""

from __future__ import annotations

import json
import subprocess

import pytest

from ftscale import allocator

from conftest import BIN, MAIN_CONFIG, ROOT


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ftscale"), "bench", "main-job", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_the_same_revision_twice_gives_the_same_answers_and_a_ratio(embedded_model, tmp_path):
    out = tmp_path / "bench"
    proc = _bench("--baseline", "HEAD", "--config", MAIN_CONFIG, "--output-dir", str(out), "--num_train_examples", "[0]",
                  "--eval.limit", "4", "--eval.max_new_tokens", "16", "--eval.baseline_variants", "[]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "main-job.json").read_text())
    assert result["baseline"] == "HEAD" and result["baseline_s"] > 0 and result["this_s"] > 0
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
