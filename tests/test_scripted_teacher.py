"""The scripted persona teacher (an offline stand-in for a strong teacher): its replies vary, name
each query's order, say what happens next and carry the persona's tone; the shipped training set is
exactly what it writes; and a short real training of the embedded model on its replies raises the
lexical tone on held-out queries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ftscale.chatdata import json_lines
from ftscale.data.tone import ORDER_PATTERN
from ftscale.eval.addresses_problem import addresses_problem
from ftscale.eval.lexical_tone import lexical_tone

from conftest import BIN, ROOT

QUERIES = ROOT / "data" / "tone" / "queries-train.jsonl"


def _ftscale(*args, ok: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _replies(path: Path) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("persona", ["rude", "cheerful"])
def test_replies_vary_address_each_query_and_carry_the_tone(tmp_path, persona):
    out = tmp_path / f"{persona}.jsonl"
    _ftscale("distill", "--teacher", f"scripted:{persona}", "--persona", persona, "-n", "1000", "--out", out, "--yes")
    queries = [rec for _, rec in json_lines(QUERIES)][:1000]
    replies = _replies(out)
    assert len(replies) == 1000 and len(set(replies)) == 1000
    # phrasings, with every slot value masked: far more than a student could memorise
    masked = {re.sub(ORDER_PATTERN, "<order>", re.sub(r"\$\d+\.\d\d", "<amount>", r.replace(q["product"], "<product>")))
              for r, q in zip(replies, queries)}
    assert len(masked) >= 300, len(masked)
    for reply, q in zip(replies, queries):
        assert re.search(ORDER_PATTERN, q["query"]).group(0) in reply, (q["query"], reply)
        assert addresses_problem(reply, q)["addresses"], (q["query"], reply)
    tones = [lexical_tone(r, persona) for r in replies]
    assert sum(t["lexical_tone"] > 0.5 for t in tones) >= 900  # most carry the persona's marker words...
    assert sum(t["lexical_tone"] < 0.5 for t in tones) <= 5  # ...and almost none the opposite ones


def test_the_shipped_training_set_is_the_scripted_teachers(tmp_path):
    out = tmp_path / "rude.jsonl"
    _ftscale("distill", "--teacher", "scripted:rude", "--persona", "rude", "-n", "1000", "--out", out, "--yes")
    assert out.read_bytes() == (ROOT / "data" / "tone" / "rude-scripted-rude.jsonl").read_bytes()
    source = json.loads((tmp_path / "rude.source.json").read_text())
    assert source == json.loads((ROOT / "data" / "tone" / "rude-scripted-rude.source.json").read_text())
    assert source["teacher"] == "scripted:rude" and "offline stand-in" in source["note"]
    task = yaml.safe_load((ROOT / "configs" / "tasks" / "tone-rude.yaml").read_text())
    assert task["data"]["train"] == "data/tone/rude-scripted-rude.jsonl"


@pytest.mark.parametrize("args,says", [
    (["--teacher", "scripted:rude", "--persona", "cheerful"], "writes the 'rude' persona, not 'cheerful'"),
    (["--teacher", "scripted:sly"], "the scripted teacher writes scripted:rude, scripted:cheerful"),
    (["--teacher", "scripted:rude", "--queries", "{plain}"], "the scripted teacher needs each query's"),
])
def test_refused_before_anything_is_written(tmp_path, args, says):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "q1", "query": "Where is my order #1234567?"}) + "\n")
    out = tmp_path / "out.jsonl"
    proc = _ftscale("distill", *[a.format(plain=plain) for a in args], "-n", "1", "--out", out, "--yes", ok=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_a_short_training_on_its_replies_raises_the_lexical_tone_on_held_out_queries(embedded_model, tmp_path):
    """A real training of the embedded model (48 replies x 2 epochs, batch 4: 24 steps), greedy, on
    16 held-out queries whose (product, problem, mood, template) never occur in training."""
    spec = yaml.safe_load((ROOT / "configs" / "tasks" / "tone-rude.yaml").read_text())
    spec["evaluators"] = [e for e in spec["evaluators"] if e["type"] in ("lexical_tone", "addresses_problem")]
    spec["headline"] = ["lexical", "addresses"]
    spec.pop("pairwise")
    task = tmp_path / "tone.yaml"
    task.write_text(yaml.safe_dump(spec, sort_keys=False))
    _ftscale("run", ROOT / "configs" / "experiments" / "tone-smollm2-cpu.yaml", "--output_dir", tmp_path / "runs",
             "--task", task, "--num_train_examples", "[0, 48]", "--train.epochs", "2", "--train.batch_size", "4",
             "--train.learning_rate", "5e-4", "--eval.limit", "16", "--eval.max_new_tokens", "64",
             "--eval.temperatures", "[0.0]", "--eval.baseline_variants", "[]", "--eval.probes", "null")
    rows = json.loads((tmp_path / "runs" / "tone-smollm2-cpu" / "results.json").read_text())["rows"]
    by_n = {r["num_train_examples"]: r for r in rows}
    assert set(by_n) == {0, 48} and all(r["n_eval"] == 16 for r in rows)
    assert by_n[48]["lexical"] > by_n[0]["lexical"] + 0.2, (by_n[0]["lexical"], by_n[48]["lexical"])
    # the summary says what taught it: the stand-in, named as such
    summary = (tmp_path / "runs" / "tone-smollm2-cpu" / "summary.md").read_text()
    assert "distilled from `scripted:rude`" in summary and "not the study's teacher" in summary
