"""The tone task's data side: customer queries, personas, the HEURISTIC lexical baseline, the
general-ability probes. Fast and deterministic: no model is loaded."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftscale.chatdata import json_lines, read_jsonl
from ftscale.data import personas, probes, tone
from ftscale.errors import ConfigError
from ftscale.eval import lexical_tone as lexical

ROOT = Path(__file__).resolve().parents[1]



QUERY_KEYS = ["id", "query", "product", "problem", "mood", "template"]


@pytest.fixture(scope="module")
def queries():
    return tone.generate()  # defaults: seed 0, 2000 train, 200 eval


def norm(s: str) -> str:
    return " ".join(s.lower().split())


def instance(query: dict) -> tuple[str, str, str, str]:
    """The template instance a query was rendered from, as its record names it."""
    return (query["product"], query["problem"], query["mood"], query["template"])


# ---------------------------------------------------------------- queries
def test_same_seed_same_files(tmp_path):
    a = tone.write(tmp_path / "a", seed=5, n_train=300, n_eval=50)
    b = tone.write(tmp_path / "b", seed=5, n_train=300, n_eval=50)
    c = tone.write(tmp_path / "c", seed=6, n_train=300, n_eval=50)
    assert (a["n_train"], a["n_eval"]) == (300, 50)
    for split in ("train", "eval"):
        assert a[split].name == f"queries-{split}.jsonl"
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()


def test_sizes_distinct_and_shapes(queries):
    train, evals = queries
    assert len(train) == 2000 and len(evals) == 200
    assert len({norm(q["query"]) for q in train}) == 2000
    assert len({norm(q["query"]) for q in evals}) == 200
    assert not {norm(q["query"]) for q in train} & {norm(q["query"]) for q in evals}
    ids = [q["id"] for q in train + evals]
    assert len(set(ids)) == len(ids)
    for q in train + evals:
        assert list(q) == QUERY_KEYS
        assert q["product"] in tone.PRODUCTS and q["problem"] in tone.PROBLEMS and q["mood"] in tone.MOODS
        assert q["template"] in tone.template_ids()[q["mood"]]
        assert q["product"] in q["query"]
        assert tone.PRODUCTS[q["product"]] in tone.PROBLEMS[q["problem"]][0]  # no setup help for a hoodie


def test_no_template_instance_in_both_splits(queries):
    train, evals = queries
    train_inst = {instance(q) for q in train}
    eval_inst = [instance(q) for q in evals]
    assert len(set(eval_inst)) == len(eval_inst)  # one query per eval instance
    assert not train_inst & set(eval_inst)
    # ...while every product, problem, mood and template of the eval set is seen in training
    for i in range(4):
        assert {x[i] for x in eval_inst} <= {x[i] for x in train_inst}


def test_eval_set_is_balanced(queries):
    _, evals = queries
    moods = [q["mood"] for q in evals]
    assert {moods.count(m) for m in tone.MOODS} <= {33, 34}
    assert {q["problem"] for q in evals} == set(tone.PROBLEMS)


def test_more_train_queries_than_instances_cycle_with_new_details():
    n_inst = len(tone.template_instances())
    train, evals = tone.generate(seed=1, n_train=n_inst + 100, n_eval=200)
    assert len({norm(q["query"]) for q in train}) == n_inst + 100
    assert not {instance(q) for q in train} & {instance(q) for q in evals}
    with pytest.raises(ValueError):
        tone.generate(n_train=10, n_eval=n_inst)


def test_shipped_files_are_seed_0(queries):
    train, evals = queries
    assert [rec for _, rec in json_lines(ROOT / "data/tone/queries-train.jsonl")] == train
    assert [rec for _, rec in json_lines(ROOT / "data/tone/queries-eval.jsonl")] == evals
    size = sum((ROOT / "data/tone" / f).stat().st_size for f in ("queries-train.jsonl", "queries-eval.jsonl"))
    assert size < 2_000_000


def test_chat_records_are_valid_chat_jsonl(queries, tmp_path):
    from ftscale.atomic import write_jsonl

    train, evals = queries
    rude = personas.load_persona("rude")
    recs = tone.eval_records(evals, rude)
    assert recs == tone.eval_records(evals, "rude")  # a name works too
    r = recs[0]
    assert set(r) == {"id", "messages", "reference"} and r["id"] == evals[0]["id"]
    assert r["messages"] == [{"role": "system", "content": rude.system_prompt},
                             {"role": "user", "content": evals[0]["query"]}]
    assert r["reference"] == {k: evals[0][k] for k in ("query", "product", "problem", "mood")} | {"persona": "rude"}
    ex = tone.train_record(train[0], rude, "  Fine. Refund issued for order 12.\n")
    assert ex == {"messages": [{"role": "system", "content": rude.system_prompt},
                               {"role": "user", "content": train[0]["query"]},
                               {"role": "assistant", "content": "Fine. Refund issued for order 12."}]}
    with pytest.raises(ValueError):
        tone.train_record(train[0], rude, "   ")
    assert len(read_jsonl(write_jsonl(tmp_path / "eval.jsonl", recs), "eval")) == 200
    assert len(read_jsonl(write_jsonl(tmp_path / "train.jsonl", [ex]), "train")) == 1


# ---------------------------------------------------------------- personas
def test_shipped_personas_load():
    assert {"rude", "cheerful"} <= set(personas.list_personas())
    for name in personas.list_personas():
        p = personas.load_persona(name)
        assert p.name == name
        assert "\n" not in p.description and "\n" not in p.system_prompt
        assert len(p.system_prompt) <= personas.SYSTEM_PROMPT_MAX_CHARS < len(p.teacher_prompt)
        assert "solve" in p.teacher_prompt.lower() and p.judge_rubric
    rude = personas.load_persona("rude")
    assert rude.lexical is None  # the lexical baseline's defaults are the rude persona's markers
    assert personas.load_persona(personas.PERSONAS_DIR / "rude.yaml") == rude  # a path works too
    assert personas.load_persona("cheerful").lexical.tone_markers


VALID = """\
name: terse
description: Says as little as possible.
teacher_prompt: |
  Reply in as few words as possible, and solve the problem.
system_prompt: Be terse.
judge_rubric: Few words, no pleasantries.
"""


def test_persona_from_path(tmp_path):
    path = tmp_path / "terse.yaml"
    path.write_text(VALID)
    p = personas.load_persona(path)
    assert p.teacher_prompt == "Reply in as few words as possible, and solve the problem."  # stripped
    assert p.lexical is None


def test_persona_missing_field_names_file_line_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("# a comment\n" + VALID.replace("system_prompt: Be terse.\n", ""))
    with pytest.raises(ConfigError) as e:
        personas.load_persona(path)
    assert re.search(rf"{re.escape(str(path))}:2: system_prompt: required key is missing", str(e.value))
    path.write_text(VALID + "lexical:\n  tone_markers: [ok]\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:7: lexical.opposite_markers: required key"):
        personas.load_persona(path)


def test_persona_unknown_key_and_bad_values_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(VALID + "judge_rubrik: typo\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:7: judge_rubrik: unknown key"):
        personas.load_persona(path)
    path.write_text(VALID.replace("system_prompt: Be terse.", "system_prompt: " + "x" * 400))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:5: system_prompt"):
        personas.load_persona(path)
    path.write_text(VALID.replace("description: Says as little as possible.", "description: |\n  two\n  lines"))
    with pytest.raises(ConfigError, match=r":2: description: must be one line"):
        personas.load_persona(path)
    with pytest.raises(ConfigError, match=r"unknown persona 'nosuch'; available: .*rude"):
        personas.load_persona("nosuch")
    with pytest.raises(ConfigError, match="persona file not found"):
        personas.load_persona(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- lexical baseline (HEURISTIC)
RUDE_REPLY = ("Obviously the tracking page says it's in transit. Did you even read it? Seriously, "
              "I've reissued order #123 anyway. Next time, wait more than a day.")
POLITE_REPLY = ("I'm so sorry for the inconvenience, and thank you for your patience! I'm happy to help: "
                "I've reissued order #123. Please don't hesitate to contact us again. Have a great day!")
NEUTRAL_REPLY = "Your order #123 has been reissued and will arrive within five business days."


def test_lexical_tone_rude_polite_neutral():
    rude = personas.load_persona("rude")
    r, p, n = (lexical.lexical_tone(t, rude) for t in (RUDE_REPLY, POLITE_REPLY, NEUTRAL_REPLY))
    assert r["tone_markers"] >= 3 and r["opposite_markers"] == 0 and r["lexical_tone"] == 1.0
    assert p["tone_markers"] == 0 and p["opposite_markers"] >= 4 and p["lexical_tone"] == 0.0
    assert n == {"tone_markers": 0, "opposite_markers": 0, "lexical_tone": 0.5}
    mixed = lexical.lexical_tone("Obviously, sorry.", rude)
    assert mixed == {"tone_markers": 1, "opposite_markers": 1, "lexical_tone": 0.5}
    assert lexical.lexical_tone(RUDE_REPLY) == r == lexical.lexical_tone(RUDE_REPLY, "rude")  # defaults = rude


def test_lexical_tone_counting_rules():
    count = lexical.count_markers
    assert count("Sorry. SORRY! sorry", ["sorry"]) == 3  # case-insensitive
    assert count("I'm pleased, thankyou, unsorry", ["please", "thank you", "sorry"]) == 0  # word boundaries
    assert count("Thank\n   you", ["thank you"]) == 1  # any whitespace inside a phrase
    assert count("I\u2019m sorry", ["i'm sorry", "sorry"]) == 1  # curly apostrophe; longest, no overlap
    assert count("Again? again", ["again?"]) == 1  # markers ending in punctuation
    assert count("", ["x"]) == 0 and count("text", []) == 0


def test_lexical_tone_uses_the_personas_markers():
    cheerful = personas.load_persona("cheerful")
    assert lexical.lexical_tone(POLITE_REPLY, cheerful)["lexical_tone"] > 0.5
    assert lexical.lexical_tone(RUDE_REPLY, cheerful)["lexical_tone"] == 0.0
    custom = {"lexical": {"tone_markers": ["reissued"], "opposite_markers": ["arrive"]}}
    assert lexical.lexical_tone(NEUTRAL_REPLY, custom) == {"tone_markers": 1, "opposite_markers": 1, "lexical_tone": 0.5}
    from ftscale.eval.evaluators import get_evaluator, parse_params

    evaluator = get_evaluator("lexical_tone")
    params = parse_params("lexical_tone", {"persona": "rude"})
    found = lexical.lexical_tone(RUDE_REPLY, "rude")
    assert evaluator.score(RUDE_REPLY, {}, params, "lex") == {
        "lex": found["lexical_tone"], "lex.tone_markers": found["tone_markers"],
        "lex.opposite_markers": found["opposite_markers"]}
    assert all(m.description.startswith("HEURISTIC") for m in evaluator.metrics(params, "lex"))
    assert "HEURISTIC" in lexical.__doc__ and "HEURISTIC" in lexical.lexical_tone.__doc__


# ---------------------------------------------------------------- probes
def test_probes_deterministic_distinct_and_plain(tmp_path):
    a = probes.generate_probes()
    assert a == probes.generate_probes(seed=0, n=100) and a != probes.generate_probes(seed=1)
    assert len(a) == 100 and len({r["id"] for r in a}) == 100
    assert len({norm(r["messages"][0]["content"]) for r in a}) == 100
    fams = [r["reference"]["family"] for r in a]
    assert {fams.count(f) for f in set(fams)} == {20} and len(set(fams)) == 5
    for r in a:
        assert [m["role"] for m in r["messages"]] == ["user"]
        q = r["messages"][0]["content"]
        assert q.endswith(" Answer with just the answer.") and "JSON" not in q
        assert r["reference"]["type"] == ("string" if isinstance(r["reference"]["answer"], str) else "number")
    res = probes.write_probes(tmp_path)
    assert res["n"] == 100 and res["probes"].name == "probes.jsonl"
    assert res["probes"].read_bytes() == (ROOT / "data/probes/probes.jsonl").read_bytes()  # shipped = seed 0
    assert len(read_jsonl(res["probes"], "eval")) == 100


NUM = {"answer": 8, "type": "number"}
FLOAT = {"answer": 33803.7272, "type": "number"}
DAY = {"answer": "Wednesday", "type": "string"}
LETTER = {"answer": "z", "type": "string"}
UPPER = {"answer": "CABBAGE", "type": "string", "case_sensitive": True}


@pytest.mark.parametrize("output,reference,expected", [
    ("8", NUM, 1.0), ("The answer is 8.", NUM, 1.0), ("65 - 57 = 8", NUM, 1.0), ("**8**", NUM, 1.0),
    ("9", NUM, 0.0), ("8? No wait, 9.", NUM, 0.0), ("eight", NUM, 0.0), ("", NUM, 0.0),
    ("33,803.73", FLOAT, 1.0), ("About 33803.7 decilitres.", FLOAT, 1.0), ("33900", FLOAT, 0.0),
    ("Wednesday", DAY, 1.0), ("wednesday.", DAY, 1.0), ("2030-11-20 falls on a Wednesday, mid-week.", DAY, 1.0),
    ("Tuesday", DAY, 0.0), ("It is a Wed.", DAY, 0.0),
    ("z", LETTER, 1.0), ('"quartz" ends with the letter "z", of course.', LETTER, 1.0), ("It ends with z.", LETTER, 1.0),
    ("It ends with t.", LETTER, 0.0), ("The word quartz ends in a vowel sound.", LETTER, 0.0),
    ("CABBAGE", UPPER, 1.0), ("In uppercase: CABBAGE", UPPER, 1.0), ("cabbage", UPPER, 0.0),
])
def test_probe_correct(output, reference, expected):
    assert probes.probe_correct(output, reference) == expected


def test_probe_references_flag_case_sensitive_uppercase_questions():
    flagged = [r for r in probes.generate_probes(n=300) if r["reference"].get("case_sensitive")]
    assert flagged and all(r["reference"]["answer"].isupper() for r in flagged)
    assert all(r["reference"]["answer"].lower() in r["messages"][0]["content"] for r in flagged)
    assert probes.probe_correct(flagged[0]["reference"]["answer"], flagged[0]["reference"]) == 1.0
    assert probes.probe_correct(flagged[0]["reference"]["answer"].lower(), flagged[0]["reference"]) == 0.0


def test_the_shipped_tone_task_checks_and_its_eval_set_is_the_generators(tmp_path):
    from ftscale.eval.tasks import get_task
    from ftscale.eval.tasks.check import check_task

    shipped = read_jsonl(ROOT / "data" / "tone" / "eval-rude.jsonl", "eval")
    assert shipped == tone.eval_records(tone.generate()[1], "rude")
    report = check_task(ROOT / "configs" / "tasks" / "tone-rude.yaml", tmp_path)
    assert report.ok, report.format()
    task = get_task(str(ROOT / "configs" / "tasks" / "tone-rude.yaml"))
    rude = task.score(shipped[0], "Obviously. Read the tracking page, it's not rocket science. Fine, refund issued.")
    polite = task.score(shipped[0], "Thank you so much for reaching out! I'm sorry, I'd be happy to help.")
    assert rude["lexical"] > polite["lexical"] and rude["refused"] == 0.0
