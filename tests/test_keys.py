"""Which API key goes to which endpoint (ftscale/apikey.py), checked against a real HTTP server
(tests/openai_standin.py) that records the Authorization header it receives, through the real
`openai` client and the real command line."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ftscale.apikey import key_for, mask
from ftscale.errors import FtscaleError
from ftscale.eval.backends import Request, Sampling, make_backend, make_judge_backend, parse_spec_key

from conftest import BIN, MAIN_CONFIG, ROOT
from openai_standin import StandIn

OPENAI_KEY = "sk-ftscale-OPENAI-KEY-4b1e7d"
PAIRED_KEY = "provider-KEY-9c2f55e1"
UNROUTABLE = "http://192.0.2.1:8000/v1"  # TEST-NET-1: only ever a string here, never connected to


@pytest.fixture
def standin(monkeypatch):
    for name in [n for n in os.environ if n.startswith("OPENAI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("STANDIN_KEY", PAIRED_KEY)
    with StandIn() as s:
        yield s


def _ask(backend) -> None:
    (gen,) = backend.generate([Request("a", [{"role": "user", "content": "hi"}])], Sampling(max_new_tokens=8))
    assert gen.error is None, gen.error


def test_the_openai_key_goes_to_no_other_endpoint_unless_paired(standin, monkeypatch):
    _ask(make_backend("openai", model="m", base_url=standin.base_url, progress=False))
    assert standin.auth_headers == {"Bearer EMPTY"}  # unpaired loopback: a placeholder, not OPENAI_API_KEY
    monkeypatch.setenv("OPENAI_BASE_URL", standin.base_url)  # the endpoint named by the environment: no key either
    _ask(make_judge_backend("openai:m"))
    assert standin.auth_headers == {"Bearer EMPTY"}
    _ask(make_backend("openai", model="m", base_url=standin.base_url, api_key_env="STANDIN_KEY", progress=False))
    assert standin.auth_headers == {"Bearer EMPTY", f"Bearer {PAIRED_KEY}"}
    standin.auth_headers.clear()
    _ask(make_judge_backend(f"openai:m@{standin.base_url}#STANDIN_KEY"))  # the spec syntax pairs it too
    assert standin.auth_headers == {f"Bearer {PAIRED_KEY}"}
    assert parse_spec_key(f"openai:org/m@{standin.base_url}#STANDIN_KEY") == ("openai", "org/m", standin.base_url,
                                                                               "STANDIN_KEY")


def test_openai_s_own_api_gets_the_openai_key(standin):
    assert key_for("https://api.openai.com/v1") == OPENAI_KEY
    assert key_for(None) == OPENAI_KEY  # the default endpoint is OpenAI's
    assert key_for("https://api.openai.com.evil.example/v1") is None
    assert key_for("http://api.openai.com/v1") is None  # not OpenAI's API: plain http


def test_bad_pairings_are_refused_before_any_request(standin, monkeypatch):
    with pytest.raises(FtscaleError, match="refusing to send an API key over plain http"):
        make_backend("openai", model="m", base_url=UNROUTABLE, api_key_env="STANDIN_KEY", progress=False)
    monkeypatch.delenv("STANDIN_KEY")
    with pytest.raises(FtscaleError, match="STANDIN_KEY is not set"):
        make_backend("openai", model="m", base_url=standin.base_url, api_key_env="STANDIN_KEY", progress=False)
    with pytest.raises(ValueError, match="#ENV_NAME"):
        parse_spec_key(f"openai:m@{standin.base_url}#not-a-name")
    assert key_for(UNROUTABLE) is None  # unpaired: nothing secret goes there, so nothing to refuse
    assert standin.auth_headers == set()


@pytest.mark.parametrize("extra, message", [
    (["--base-url", UNROUTABLE, "--api-key-env", "STANDIN_KEY"], "refusing to send an API key over plain http"),
    (["--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "NO_SUCH_KEY_VAR"], "NO_SUCH_KEY_VAR is not set"),
])
def test_the_cli_refuses_a_bad_pairing_with_one_line_and_writes_nothing(standin, tmp_path, extra, message):
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "ftscale"), "eval", "--config", str(MAIN_CONFIG), "--backend", "openai",
                           "--model", "m", "--output-dir", str(out), *extra], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_mask_hides_keys_and_bearer_tokens(standin):
    text = mask(f"bad key {OPENAI_KEY}; header Bearer {PAIRED_KEY}; other sk-proj-AbCdEf012345; plain words stay")
    assert OPENAI_KEY not in text and PAIRED_KEY not in text and "AbCdEf012345" not in text
    assert text.endswith("plain words stay") and "Bearer ***" in text


def test_a_provider_error_quoting_the_key_is_stored_and_printed_masked(standin, tmp_path):
    """A provider that echoes the rejected key: the error is recorded (exit 1), the key is not."""
    standin.chat_faults = ["401"]
    out = tmp_path / "run"
    proc = subprocess.run([str(BIN / "ftscale"), "eval", "--config", str(MAIN_CONFIG), "--backend", "openai",
                           "--base-url", standin.base_url, "--api-key-env", "STANDIN_KEY", "--model", "m",
                           "--variant", "default", "--eval.limit", "2", "--output-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert f"Bearer {PAIRED_KEY}" in standin.auth_headers  # the paired key was sent...
    records = [json.loads(line) for p in out.rglob("generations.jsonl") for line in p.read_text().splitlines()]
    errors = [r["error"] for r in records if r.get("error")]
    assert errors and "AuthenticationError" in errors[0] and "***" in errors[0], (proc.stderr[-2000:], records)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for path in written:  # ...and appears in no file of the run folder, nor in any output
        assert PAIRED_KEY not in path.read_text(errors="replace"), path
    assert PAIRED_KEY not in proc.stdout + proc.stderr


# --- the migration commands: the same rule, against an endpoint that checks its key as OpenAI does ----------

def _train_file(n: int = 20) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                            {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                   for i in range(n)).encode()


@pytest.fixture
def keyed(monkeypatch):
    """An OpenAI-compatible endpoint (a gateway, a proxy) that refuses requests without its key, which here
    is the user's OpenAI key; reached through OPENAI_BASE_URL, as users point the openai client at one."""
    for name in [n for n in os.environ if n.startswith("OPENAI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with StandIn(key=OPENAI_KEY) as s:
        _, s.ft = s.add_fine_tune("gpt-4o-mini-2024-07-18", _train_file())
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        yield s


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ftscale"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_inventory_sends_the_openai_key_only_to_a_paired_endpoint(keyed, tmp_path):
    proc = _cli("openai", "inventory", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refused the request (401)" in proc.stderr and "--api-key-env NAME" in proc.stderr
    assert f"Bearer {OPENAI_KEY}" not in keyed.auth_headers  # the unpaired endpoint never saw the key
    proc = _cli("openai", "inventory", "--api-key-env", "OPENAI_API_KEY", cwd=tmp_path)
    assert proc.returncode == 0 and keyed.ft in proc.stdout, proc.stderr
    assert f"Bearer {OPENAI_KEY}" in keyed.auth_headers


def test_capture_pairs_the_key_with_base_url_for_every_request(keyed, tmp_path):
    """The report: every capture request was refused with 401 (the backend sent the placeholder)."""
    unpaired = _cli("migrate", "capture", keyed.ft, "--output-dir", "a", "--eval-size", "3", cwd=tmp_path)
    assert unpaired.returncode == 2 and "--api-key-env" in unpaired.stderr, unpaired.stderr
    assert len(unpaired.stderr.strip().splitlines()) == 1 and OPENAI_KEY not in unpaired.stderr
    ok = _cli("migrate", "capture", keyed.ft, "--output-dir", "b", "--eval-size", "3", "--base-url", keyed.base_url,
              "--api-key-env", "OPENAI_API_KEY", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    captured = (tmp_path / "b" / "captured.jsonl").read_text().splitlines()
    assert len(captured) == 3 and all(json.loads(line)["output"] for line in captured)
    assert not any(OPENAI_KEY in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_a_401_from_a_paired_endpoint_says_the_key_was_wrong(keyed, monkeypatch, tmp_path):
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-key-000000")
    proc = _cli("openai", "inventory", "--api-key-env", "WRONG_KEY", cwd=tmp_path)
    assert proc.returncode == 2 and "rejected the key" in proc.stderr and "sk-wrong-key-000000" not in proc.stderr
