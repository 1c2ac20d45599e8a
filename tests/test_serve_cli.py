"""`ftscale serve` as a user runs it: it comes up on loopback, answers, and Ctrl-C stops everything."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import psutil
from openai import OpenAI

from conftest import BIN, ROOT


def test_serve_answers_and_ctrl_c_leaves_no_process(trained_run, tmp_path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen([str(BIN / "ftscale"), "serve", "--model", "smollm2-135m", "--adapter", f"ft={trained_run}",
                             "--log", str(log)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, line = time.monotonic() + 600, ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, log.read_text()[-3000:]
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line).group(1)
        server_pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        reply = OpenAI(base_url=url, api_key="EMPTY").chat.completions.create(
            model="ft", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        proc.wait(timeout=120)
    assert proc.returncode == 130
    assert server_pids and not [p for p in server_pids if psutil.pid_exists(p)
                                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
