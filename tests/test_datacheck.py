"""`ftscale data check`: OpenAI's rules for chat fine-tuning files, every bad line reported."""

from __future__ import annotations

import json
import subprocess

from ftscale import datacheck
from ftscale.datacheck import check_file

from conftest import BIN, ROOT


def _example(q="What is 2 + 2?", a="4", **extra_msg):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a, **extra_msg}]}


def _write(path, records_or_lines):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records_or_lines))
    return path


def test_summary_of_a_good_file(tmp_path):
    path = _write(tmp_path / "train.jsonl", [_example(f"What is {i} + 2?", str(i + 2)) for i in range(10, 22)] + [_example()] * 2)
    report = check_file(path, epochs=3)
    assert report.ok and report.examples == 14 and report.duplicates == 1
    assert report.over_limit == 0 and report.max_example_tokens == 65536
    enc = datacheck.encoding_for(report.model)[0]
    # the cookbook's accounting: 3 per message + role + content, + 3 to prime the reply
    first = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in _example()["messages"])
    assert report.tokens["min"] <= first <= report.tokens["max"]
    assert report.billed_tokens == 3 * report.billed_tokens_per_epoch == 3 * sum(
        datacheck.count_tokens(json.loads(line)["messages"], enc) for line in path.read_text().splitlines())
    assert "billed training tokens" in report.format()


def test_every_bad_line_is_reported_with_file_and_line(tmp_path):
    lines = [_example()] * 10 + ["{oops", {"messages": [{"role": "user", "content": "hi"}]},
                                 _example(weight=2), {"messages": [{"role": "user", "content": "q", "tool": 1},
                                                                   {"role": "assistant", "content": "a"}]}]
    report = check_file(_write(tmp_path / "t.jsonl", lines))
    assert not report.ok and report.examples == 10
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{tmp_path / 't.jsonl'}:{n}" for n in (11, 12, 13, 14)]
    assert "not valid JSON" in report.errors[0] and "assistant" in report.errors[1]
    assert "weight must be 0 or 1" in report.errors[2] and "['tool']" in report.errors[3]


def test_too_few_examples_and_too_long_examples(tmp_path, monkeypatch):
    path = _write(tmp_path / "t.jsonl", [_example()] * 9)
    assert any("needs at least 10" in e for e in check_file(path).errors)
    monkeypatch.setattr(datacheck, "max_example_tokens", lambda model: 40)
    report = check_file(_write(tmp_path / "u.jsonl", [_example()] * 9 + [_example(a="word " * 50)]))
    short = datacheck.count_tokens(_example()["messages"], datacheck.encoding_for(report.model)[0])
    assert short < 40 and report.over_limit == 1
    assert report.billed_tokens_per_epoch == 9 * short + 40  # the long one is billed up to the limit


def test_cli_exits_non_zero_on_errors(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [_example()] * 10 + ["{oops"])
    proc = subprocess.run([str(BIN / "ftscale"), "data", "check", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and f"{bad}:11: not valid JSON" in proc.stdout
    ok = subprocess.run([str(BIN / "ftscale"), "data", "check", "data/formatting/train.jsonl", "data/formatting/eval.jsonl"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "1200 examples, 0 errors" in ok.stdout and "200 eval examples" in ok.stdout
