"""The formatting evaluators, on outputs of the kinds models really produce."""

from __future__ import annotations

import pytest

from ftscale.eval.tasks import get_task

TASK = get_task("formatting")
NUM = {"reference": {"answer": 33, "type": "number", "family": "arithmetic"}}
STR = {"reference": {"answer": "Thursday", "type": "string", "family": "dates"}}


@pytest.mark.parametrize("example, output, expected", [
    (NUM, '{"answer": 33, "explanation": "12 + 7 x 3 = 33."}', (1, 1, 1)),
    (NUM, '  {"answer": 33.0004, "explanation": "close enough."}\n', (1, 1, 1)),
    (NUM, '{"answer": "33", "explanation": "a string, but the right number."}', (1, 1, 1)),
    (NUM, '{"answer": 34, "explanation": "off by one."}', (1, 0, 0)),
    (NUM, 'Sure! {"answer": 33, "explanation": "wrapped in prose."}', (0, 1, 0)),
    (NUM, '```json\n{"answer": 33, "explanation": "fenced."}\n```', (0, 1, 0)),
    (NUM, '{"answer": 33}', (0, 1, 0)),  # a required key missing
    (NUM, '{"answer": 33, "explanation": "x", "confidence": 1}', (0, 1, 0)),  # an extra key
    (NUM, '{"answer": [33], "explanation": "wrong type"}', (0, 0, 0)),
    (NUM, "The answer is 33.", (0, 0, 0)),
    (STR, '{"answer": " thursday. ", "explanation": "case and space do not matter."}', (1, 1, 1)),
    (STR, '{"answer": "Friday", "explanation": "wrong day."}', (1, 0, 0)),
    (STR, '{"answer": "Thursday", "explanation": ""}', (0, 1, 0)),  # the schema wants an explanation
])
def test_scores(example, output, expected):
    s = TASK.score(example, output)
    assert (s["format_ok"], s["answer_correct"], s["both"]) == expected


def test_few_shot_variant_shows_training_examples_before_the_question():
    pool = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    example = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}
    msgs = TASK.build_messages(example, "few_shot", pool, 3, 0)
    assert msgs[0] == {"role": "system", "content": "S"} and msgs[-1] == {"role": "user", "content": "Q"}
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * 3
    assert TASK.build_messages(example, "few_shot", pool, 3, 0) == msgs  # deterministic
    assert TASK.build_messages(example, "default", pool, 3, 0) == example["messages"]
