"""On a shared host: what ftscale writes keeps to the user's umask; a sweep system's folder stays inside the
sweep's folder; a `--baseline` is never read by git as an option; a failed tuning trial's error is stored
and printed with its keys masked."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess

import pytest
import yaml

from ftscale.atomic import atomic_dir, write_jsonl, write_text
from ftscale.errors import ConfigError

from conftest import BIN, MAIN_CONFIG, ROOT
from openai_standin import StandIn


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Sets this process's umask for the test, and puts the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, plain, executable", [(0o077, 0o600, 0o700), (0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_files_and_folders_written_keep_to_the_users_umask(tmp_path, umask, mask, plain, executable):
    from ftscale.results_store import ResultsStore

    umask(mask)
    assert _mode(write_text(tmp_path / "a.txt", "x")) == plain
    assert _mode(write_jsonl(tmp_path / "captured.jsonl", [{"a": 1}])) == plain
    with atomic_dir(tmp_path / "adapter") as d:
        (d / "weights.safetensors").write_bytes(b"w")
        os.chmod(d / "weights.safetensors", 0o600)  # as some writers leave their files
        (d / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(d / "run.sh", 0o700)
        (d / "sub").mkdir()
    assert (_mode(tmp_path / "adapter"), _mode(tmp_path / "adapter" / "sub")) == (executable, executable)
    assert _mode(tmp_path / "adapter" / "weights.safetensors") == plain
    assert _mode(tmp_path / "adapter" / "run.sh") == executable
    assert _mode(ResultsStore.rebuild(tmp_path / "results.db", []).path) == plain


def test_a_rating_study_built_under_umask_077_is_its_owners_alone(tmp_path):
    gens = []
    for system in ("a", "b"):
        path = tmp_path / f"{system}.jsonl"
        path.write_text(json.dumps({"id": "q1", "prompt": [{"role": "user", "content": "hi"}], "output": system}) + "\n")
        gens.append(f"{system}={path}")
    proc = subprocess.run([str(BIN / "ftscale"), "rate", "s", "--studies-dir", str(tmp_path / "studies"), "--build", *gens],
                          cwd=ROOT, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o077), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _mode(tmp_path / "studies" / "s" / "study.json") == 0o600


@pytest.mark.parametrize("name", ["..", ".", "", "/", "!!!"])
def test_a_sweep_system_named_outside_the_sweep_folder_is_refused_with_file_and_line(tmp_path, name):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": str(MAIN_CONFIG), "output_dir": str(tmp_path / "sweeps"),
                                    "systems": [{"name": "lora", "model": "smollm2-135m"},
                                                {"name": name, "model": "smollm2-135m"}]}, sort_keys=False))
    from ftscale.sweepconfig import load_sweep

    with pytest.raises(ConfigError, match=rf"sweep.yaml:\d+: systems.1.name: .* names no folder inside the sweep's folder"):
        load_sweep(path)
    assert not (tmp_path / "sweeps").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def test_a_baseline_that_git_would_read_as_an_option_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "bench"
    proc = subprocess.run([str(BIN / "ftscale"), "bench", "main-job", f"--baseline=--output={victim}", "--output-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--baseline --output={victim}: a git revision" in proc.stderr
    assert victim.read_text() == "keep me"  # git never wrote its archive over it
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_trials_error_is_stored_and_printed_masked(tmp_path, monkeypatch):
    """A trial fails with a provider's error that quotes the key (the real `openai` client against a server
    that echoes the rejected key): optuna.db, the report and the log hold it masked."""
    import optuna

    from ftscale import tune

    key = "sk-ftscale-TUNE-KEY-7f3a9c2d"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with StandIn() as standin:
        standin.chat_faults = ["401"] * 10
        import openai

        def calls_the_provider(search, trial, log=print):
            client = openai.OpenAI(base_url=standin.base_url, api_key=key, max_retries=0)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            return 1.0

        monkeypatch.setattr(tune, "run_trial", calls_the_provider)
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        study = optuna.create_study(storage=storage, study_name="t")
        logged = io.StringIO()
        handler = logging.StreamHandler(logged)  # what Optuna prints about the failed trial
        logging.getLogger("optuna").addHandler(handler)
        try:
            study.optimize(tune._objective(None, print), n_trials=1, catch=(Exception,))
        finally:
            logging.getLogger("optuna").removeHandler(handler)
        assert standin.auth_headers == {f"Bearer {key}"}  # the key went out, and came back in the error
    (trial,) = optuna.load_study(study_name="t", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "AuthenticationError" in trial.user_attrs["error"] and "***" in trial.user_attrs["error"]
    assert key.encode() not in (tmp_path / "optuna.db").read_bytes()
    assert "Trial 0 failed" in logged.getvalue() and key not in logged.getvalue()
