"""One writer per result (ftscale/claims.py): a claim left by a killed process is taken over at once on
its machine and, from another machine, once its lease ran out (never by asking whether a pid there
runs); a scheduler job leaves a cell another live process holds untouched; the distillation and
capture caches keep every line of every process appending to them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ftscale.chatdata import json_lines

from conftest import MAIN_CONFIG, ROOT

HOLDER = """
import sys, time
from ftscale.claims import Claim
Claim(sys.argv[1], "a test holder").hold()
print("held", flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """A real process that claims `folder` and keeps it (renewing its lease) until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _record(folder: Path) -> tuple[Path, dict]:
    from ftscale.claims import DIR

    (path,) = sorted((folder / DIR).glob("*.json"))[-1:]
    return path, json.loads(path.read_text())


def test_a_claim_left_by_a_killed_process_is_taken_over(tmp_path, monkeypatch):
    from ftscale.claims import Claim, ClaimLost, Held

    folder = tmp_path / "cell"
    proc = _holder(folder)
    try:
        with pytest.raises(Held, match=f"in use by a test holder on .*, pid {proc.pid}, since "):
            Claim(folder, "second").hold()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    claim = Claim(folder, "after the kill")
    assert claim.acquire()  # its process is gone on this machine: no lease to wait out
    _, rec = _record(folder)
    assert rec["pid"] == os.getpid() and rec["what"] == "after the kill" and rec["since"] <= time.time()
    claim.release()

    # a claim of another machine is judged by its lease alone: never by asking whether its pid runs
    monkeypatch.setenv("FTSCALE_CLAIM_LEASE_S", "30")
    proc = _holder(folder)
    path, rec = _record(folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path.write_text(json.dumps(rec | {"host": "node-b", "node": "node-b|another-boot|1"}))  # renewed just now
    assert not Claim(folder, "c").acquire()  # its pid is dead here, but it is node-b's: the lease holds
    stale = time.time() - 31
    os.utime(path, (stale, stale))  # node-b stopped renewing it 31 s ago: the lease ran out
    taker = Claim(folder, "taker")
    assert taker.acquire() and not Claim(folder, "late").acquire()
    taker.release()

    # an owner that stalled past its lease finds its claim taken over before it writes a result
    owner = Claim(folder, "owner")
    assert owner.acquire()
    path, rec = _record(folder)
    path.write_text(json.dumps(rec | {"node": "node-b|another-boot|1"}))
    os.utime(path, (stale, stale))
    assert Claim(folder, "taker").acquire()
    with pytest.raises(ClaimLost, match="this process's claim was taken over by taker"):
        owner.check()


def test_a_scheduler_job_leaves_a_cell_another_process_holds(embedded_model, tmp_path):
    from ftscale.results_store import STATE
    from ftscale.sweep import run_one
    from ftscale.sweepconfig import expand, load_sweep

    spec = {"name": "held", "base": str(MAIN_CONFIG), "overrides": {"eval.limit": 2, "eval.max_new_tokens": 8},
            "systems": [{"name": "lora", "model": "smollm2-135m"}], "num_train_examples": [0], "seeds": [1],
            "prompt_variants": ["default"], "baseline_variants": [], "output_dir": str(tmp_path / "sweeps")}
    path = tmp_path / "held.yaml"
    path.write_text(yaml.safe_dump(spec))
    (cell,) = expand(*load_sweep(path))
    proc = _holder(cell.run_dir)
    try:
        assert run_one(str(path), cell.key).startswith(f"left to a test holder on ")
        assert not (cell.run_dir / STATE).exists() and not (cell.run_dir / "config.yaml").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _cache_items(n: int):
    from ftscale.data.distill import cache_key, teacher_messages
    from ftscale.data.scripted_teacher import ScriptedTeacher
    from ftscale.eval.backends import Request

    queries = [rec for _, rec in json_lines(ROOT / "data" / "tone" / "queries-train.jsonl")][:n]
    items = [(cache_key("scripted:rude", "rude", "be rude", q["query"]), Request(q["id"], teacher_messages("be rude", q["query"])),
              {"query": q["query"]}) for q in queries]
    return ScriptedTeacher("scripted:rude", {q["id"]: q for q in queries}), items


def test_a_cache_line_torn_by_a_killed_writer_costs_no_line_of_another(tmp_path):
    """Two processes append to one cache; one is killed in the middle of a line while the other runs."""
    from ftscale.data.distill import ask_cached, load_cache
    from ftscale.eval.backends import Sampling

    cache_path = tmp_path / "cache.jsonl"
    backend, items = _cache_items(12)
    cache = load_cache(cache_path)  # the surviving process starts: nothing cached yet
    ask_cached(backend, items[:4], Sampling(), cache, cache_path, batch_size=4, progress=False)
    with open(cache_path, "ab") as f:  # the other process, killed half-way through writing its line
        f.write(b'{"key": "0f3a", "teacher": "scripted:rude", "reply": "Wh')
    ask_cached(backend, items[4:], Sampling(), cache, cache_path, batch_size=4, progress=False)
    again = load_cache(cache_path)
    assert set(again) == {key for key, _, _ in items}  # every answer of the survivor kept, none run into the torn line
    assert all(line.endswith("}") for line in cache_path.read_text().splitlines())


SLOW_WRITER = """
import sys
from ftscale.claims import appending
line = (sys.argv[2] + "\\n").encode()
with appending(sys.argv[1]) as f:
    f.write(line[:20]); f.flush()
    print("half", flush=True)
    sys.stdin.readline()
    f.write(line[20:])
"""


def test_a_line_another_process_is_writing_is_not_cut_by_a_reader(tmp_path):
    from ftscale.data.distill import load_cache

    cache_path = tmp_path / "cache.jsonl"
    record = {"key": "k1", "teacher": "t", "reply": "a reply long enough to be written in two pieces"}
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(cache_path), json.dumps(record)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "half"  # the writer is in the middle of its line
    loaded = {}
    reader = threading.Thread(target=lambda: loaded.update(load_cache(cache_path)))
    reader.start()  # another process starting: it reads (and would repair) the cache
    time.sleep(1.0)
    writer.stdin.write("\n")
    writer.stdin.flush()
    assert writer.wait(timeout=30) == 0
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert load_cache(cache_path) == {"k1": record}  # the line was waited for, not cut
    assert cache_path.read_text() == json.dumps(record) + "\n"
