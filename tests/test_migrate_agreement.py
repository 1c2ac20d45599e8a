"""The agreement evaluators on hand-made cases, and agreement_judge through a real judge backend
(the stand-in's chat endpoint answering a fixed verdict)."""

from __future__ import annotations

import pytest

from ftscale.eval.agreement_evaluators import both_orders
from ftscale.eval.evaluators import get_evaluator, parse_params


def score(name: str, output: str, captured, **params) -> dict:
    e = get_evaluator(name)
    return e.score(output, {} if captured is None else {"captured": captured}, parse_params(name, params), "a")


def test_agreement_exact_normalises_text():
    assert score("agreement_exact", "  Hello   World ", "hello world")["a"] == 1.0
    assert score("agreement_exact", "Hello World", "hello world", case_sensitive=True)["a"] == 0.0
    assert score("agreement_exact", "Hello, world!", "hello world")["a"] == 0.0
    assert score("agreement_exact", "Hello, world!", "hello world", ignore_punctuation=True)["a"] == 1.0
    assert score("agreement_exact", "cafe\u0301", "caf\u00e9")["a"] == 1.0  # NFC
    assert score("agreement_exact", "anything", None)["a"] is None  # nothing captured: not scorable


def test_agreement_json_compares_fields_of_the_first_object():
    ft = 'Sure: {"customer": "Ana", "quantity": 3, "express": true} done'
    same = score("agreement_json", '```json\n{"express": true, "quantity": 3.0, "customer": "ana"}\n```', ft)
    assert (same["a"], same["a.all"], same["a.differ"]) == (1.0, 1.0, [])
    one_off = score("agreement_json", '{"customer": "Ana", "quantity": 4, "express": true}', ft)
    assert one_off["a"] == pytest.approx(2 / 3) and one_off["a.all"] == 0.0 and one_off["a.differ"] == ["quantity"]
    assert score("agreement_json", "no json here", ft)["a"] == 0.0
    assert score("agreement_json", '{"customer": "Ana"}', "plain text answer")["a"] is None
    chosen = score("agreement_json", '{"customer": "Ana", "quantity": 4}', ft, fields=["customer"])
    assert chosen["a"] == 1.0 and chosen["a.all"] == 1.0


def test_both_orders_combine_like_the_pairwise_judge():
    assert both_orders(1.0, 1.0) == 1.0  # local won both
    assert both_orders(1.0, 0.0) == 1.0  # split: a tie, as good
    assert both_orders(0.5, 0.5) == 1.0
    assert both_orders(0.0, 0.5) == 0.0  # the fine-tune won one and tied the other
    assert both_orders(0.0, 0.0) == 0.0
    assert both_orders(None, 1.0) is None


def test_agreement_judge_asks_both_orders_through_a_real_backend(monkeypatch):
    from openai_standin import StandIn

    from ftscale.eval.backends import Request, Sampling, make_judge_backend

    with StandIn() as s:
        s.answer = lambda req: "Winner: A"  # a judge that always prefers the first position
        spec = f"openai:judge@{s.base_url}"
        e = get_evaluator("agreement_judge")
        reference = {"captured": "the fine-tune's answer"}
        scores = {}
        for order in ("local_first", "captured_first"):
            params = parse_params("agreement_judge", {"judge": spec, "order": order})
            messages = e.judge.messages(params, "the question", "the local answer", reference)
            shown = messages[-1]["content"]
            first = "the local answer" if order == "local_first" else "the fine-tune's answer"
            assert shown.index(first) < shown.index("Answer B")
            reply = make_judge_backend(spec).generate([Request("1", messages)], Sampling(max_new_tokens=16))[0]
            scores[order] = e.judge.scores(reply.text, params, "j")["j"]
        assert scores == {"local_first": 1.0, "captured_first": 0.0}
        assert both_orders(scores["local_first"], scores["captured_first"]) == 1.0  # position bias: a tie
        bad = parse_params("agreement_judge", {"judge": spec, "order": "local_first"})
        assert e.judge.scores("I prefer A", bad, "j") == {"j": None, "j.unparsable": 1.0}
    with pytest.raises(ValueError, match="order"):
        parse_params("agreement_judge", {"judge": spec, "order": "sideways"})
