"""The chat JSONL format: every bad line is reported as file:line: reason."""

from __future__ import annotations

import json

import pytest

from ftscale.atomic import atomic_dir, write_jsonl
from ftscale.chatdata import nested_subset, read_jsonl
from ftscale.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


@pytest.mark.parametrize("line, reason", [
    ("{not json", "not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "last message must be the assistant's answer"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}, GOOD["messages"][1]]}), "unknown role 'robot'"),
    (json.dumps({"messages": [{"role": "user", "content": "  "}, GOOD["messages"][1]]}), "empty content"),
    (json.dumps({"text": "hi"}), "expected an object with a 'messages' list"),
])
def test_bad_lines_are_reported_with_file_and_line(tmp_path, line, reason):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl(path, "train")
    assert str(e.value).startswith(f"{path}:3: ") and reason in str(e.value)


def test_eval_examples_need_unique_ids(tmp_path):
    rec = {"id": "a", "messages": [{"role": "user", "content": "q"}], "reference": {"answer": 1}}
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"eval.jsonl:2: duplicate id 'a'"):
        read_jsonl(path, "eval")


def test_subsets_are_nested_and_seeded():
    pool = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]} for i in range(300)]
    s50, s100 = nested_subset(pool, 50, seed=3), nested_subset(pool, 100, seed=3)
    assert s100[:50] == s50
    assert nested_subset(pool, 50, seed=4) != s50
    assert s50 != pool[:50]  # shuffled, not the file's head
    with pytest.raises(DataError, match="only 300"):
        nested_subset(pool, 301, seed=0)


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]


def test_an_interrupted_directory_write_keeps_the_old_directory(tmp_path):
    with atomic_dir(tmp_path / "adapter") as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "adapter") as d:
            (d / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "adapter" / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
