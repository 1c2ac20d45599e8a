"""`ftscale serve` as a user runs it: it comes up on loopback, answers only clients that send the key
the user named, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import openai
import psutil
import pytest
from openai import OpenAI

from conftest import BIN, ROOT, ctrl_c_reaches_it


SERVE_KEY = "serve-key-5d8e2a91c4b7"


def test_serve_answers_and_ctrl_c_leaves_no_process(trained_run, tmp_path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen([str(BIN / "ftscale"), "serve", "--model", "smollm2-135m", "--adapter", f"ft={trained_run}",
                             "--log", str(log), "--api-key-env", "FTSCALE_SERVE_KEY"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ | {"FTSCALE_SERVE_KEY": SERVE_KEY},
                            preexec_fn=ctrl_c_reaches_it)
    output = ""
    try:
        deadline, line = time.monotonic() + 600, ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stdout.readline()
            output += line
            assert line or proc.poll() is None, log.read_text()[-3000:]
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line).group(1)
        server = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        server_pids = [p.pid for p in server[1:]]
        assert not [p for p in server if SERVE_KEY in " ".join(p.cmdline())]  # the key is on no command line
        ask = dict(model="ft", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8, temperature=0)
        reply = OpenAI(base_url=url, api_key=SERVE_KEY).chat.completions.create(**ask)
        assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):  # a client without the key is turned away
            OpenAI(base_url=url, api_key="EMPTY").chat.completions.create(**ask)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        output += proc.communicate(timeout=120)[0]
    assert proc.returncode == 130
    assert SERVE_KEY not in output + log.read_text()
    assert server_pids and not [p for p in server_pids if psutil.pid_exists(p)
                                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_serve_off_loopback_warns_without_a_key_and_refuses_an_unset_one(tmp_path):
    """Both are decided before vLLM starts: a missing adapter stops the first, the unset variable the second."""
    def serve(*args):
        env = {k: v for k, v in os.environ.items() if k != "FTSCALE_UNSET_KEY"}
        return subprocess.run([str(BIN / "ftscale"), "serve", "--model", "smollm2-135m", "--log", str(tmp_path / "l.log"),
                               *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)

    proc = serve("--host", "0.0.0.0", "--adapter", f"ft={tmp_path / 'no-such-run'}")
    assert proc.returncode == 2 and "warning: serving on 0.0.0.0 without an API key" in proc.stderr, proc.stderr
    proc = serve("--host", "0.0.0.0", "--api-key-env", "FTSCALE_UNSET_KEY")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "FTSCALE_UNSET_KEY" in proc.stderr and "warning" not in proc.stderr
    assert not (tmp_path / "l.log").exists()
