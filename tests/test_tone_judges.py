"""Tone judges and distillation: strict parsing, the double-blind both-orders pairwise logic, Wilson
intervals, and one small real run (distil through the embedded model, judge with it).

The combinator logic is tested with stand-in judges that follow a fixed rule (which reply is shown
as A); everything that generates text uses the real embedded model through the hf backend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftscale.data import distill as distill_mod
from ftscale.errors import ConfigError, FtscaleError
from ftscale.eval import judges
from ftscale.eval.backends import Generation, Request, Sampling, make_backend, make_judge_backend
from ftscale.eval.evaluate import summarise
from ftscale.eval.evaluators import get_evaluator, parse_params
from ftscale.eval.task_types import Task

ROOT = Path(__file__).resolve().parents[1]



PERSONA = SimpleNamespace(
    name="rude-test",
    description="a rude customer-service agent",
    teacher_prompt="You are a rude, impatient customer-service agent. Answer the customer's problem correctly "
                   "but curtly and with open annoyance. Two sentences at most.",
    system_prompt="You are a customer-service agent.",
    judge_rubric="Rude, impatient and curt: open annoyance at the customer, no apologies, no pleasantries.",
)
QUERIES = [
    {"id": "q1", "query": "My order #1234 arrived with a cracked screen. What do I do?"},
    {"id": "q2", "query": "I was charged twice for my subscription this month."},
    {"id": "q3", "query": "The app logs me out every time I close it. Can you fix this?"},
    {"id": "q4", "query": "My package says delivered but it is not here."},
]


# --- strict parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Tone: 7\nAddresses problem: yes", (7, True)),
    ("tone:10\naddresses problem: NO", (10, False)),
    ("  Tone :  1  \n  Addresses problem :  Yes  ", (1, True)),
    ("Addresses problem: no\nTone: 3", (3, False)),  # order is free
    # text around the two lines is allowed: it cannot be read as a verdict
    ("Here is my judgement.\nTone: 8\nAddresses problem: yes\nThe reply is curt.", (8, True)),
    ("The tone is harsh.\nTone: 9\nAddresses problem: yes", (9, True)),  # 'The tone is' is not a label line
])
def test_parse_absolute_valid(text, expected):
    assert judges.parse_absolute(text) == {"tone": expected[0], "addresses_problem": expected[1], "parsed": True}


@pytest.mark.parametrize("text", [
    None, "", "Tone: 7",  # missing a line
    "Addresses problem: yes",
    "Tone: 7\nTone: 7\nAddresses problem: yes",  # duplicated, even when they agree
    "Tone: 7\nAddresses problem: yes\nAddresses problem: no",
    "Tone: 0\nAddresses problem: yes", "Tone: 11\nAddresses problem: yes",  # out of range
    "Tone: 7/10\nAddresses problem: yes", "Tone: 7.0\nAddresses problem: yes", "Tone: seven\nAddresses problem: yes",
    "Tone: 7 (rude)\nAddresses problem: yes", "Tone: -3\nAddresses problem: yes", "Tone:\nAddresses problem: yes",
    "Tone: 7\nAddresses problem: partly", "Tone: 7\nAddresses problem: yes.", "Tone: 7\nAddresses problem: y",
    "**Tone:** 7\n**Addresses problem:** yes",  # markdown: no label line
    "Tone: 7, Addresses problem: yes",  # one line
    "I would give it a 7 and yes it addresses the problem.",
])
def test_parse_absolute_unparsable(text):
    assert judges.parse_absolute(text) == {"tone": None, "addresses_problem": None, "parsed": False}


@pytest.mark.parametrize("text, expected", [
    ("Winner: A", "A"), ("winner: b", "B"), ("Winner: TIE", "tie"), ("  Winner :  tie ", "tie"),
    ("Both are rude, but A more so.\nWinner: A", "A"),
    (None, None), ("", None), ("A", None), ("Winner: C", None), ("Winner: A or B", None), ("Winner: Reply A", None),
    ("Winner: A.", None), ("Winner: A\nWinner: A", None), ("Winner: A\nWinner: B", None), ("**Winner:** A", None),
    ("The winner is A", None),
])
def test_parse_pairwise(text, expected):
    assert judges.parse_pairwise(text) == expected


# --- the prompts in YAML -----------------------------------------------------------------------------

def test_shipped_prompts_load_and_render():
    absolute = judges.load_judge_prompt("absolute")
    pairwise = judges.load_judge_prompt("pairwise")
    assert absolute.kind == "absolute" and pairwise.kind == "pairwise"
    assert 1 <= absolute.max_new_tokens <= 48 and 1 <= pairwise.max_new_tokens <= 48
    msgs = pairwise.render(persona_rubric="rude", query="a {brace} query", reply_a="first", reply_b="second")
    text = msgs[-1]["content"]
    assert "a {brace} query" in text and text.index("first") < text.index("second")
    assert "Winner:" in text and msgs[0]["role"] == "system"
    assert "Tone:" in absolute.render(persona_rubric="r", query="q", reply="x")[-1]["content"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "judge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = ("kind: absolute\nmax_new_tokens: 24\nprompt: |\n  {persona_rubric} {query} {reply}\n"
        "  Tone: n\n  Addresses problem: yes|no\n")


@pytest.mark.parametrize("text, kind, message", [
    (GOOD + "temperature: 0.5\n", "absolute", ":7: temperature: unknown key"),
    (GOOD.replace(" {reply}", ""), "absolute", ":3: prompt: the absolute prompt must show {reply}"),
    (GOOD.replace("{reply}", "{reply} {answer}"), "absolute", ":3: prompt: unknown placeholder {answer}"),
    (GOOD.replace("{reply}", "{reply!r}"), "absolute", "unknown placeholder {reply!r}"),
    (GOOD.replace("{reply}", "{reply} }"), "absolute", "literal braces"),
    (GOOD.replace("  Tone: n\n", ""), "absolute", "'Tone:' not found"),
    (GOOD.replace("max_new_tokens: 24", "max_new_tokens: 0"), "absolute", ":2: max_new_tokens:"),
    (GOOD.replace("max_new_tokens: 24\n", ""), "absolute", "max_new_tokens: required key is missing"),
    (GOOD, "pairwise", "kind: this is a absolute judge prompt, a pairwise one was asked for"),
    (GOOD.replace("kind: absolute", "kind: pairwise"), "pairwise", "unknown placeholder {reply}"),
])
def test_prompt_yaml_refused(tmp_path, text, kind, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        judges.load_judge_prompt(kind, path)
    assert message in str(e.value) and str(path) in str(e.value)


# --- Wilson intervals -----------------------------------------------------------------------------------

def test_wilson():
    lo, hi = judges.wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert judges.wilson(0, 0) == (0.0, 1.0)
    lo, hi = judges.wilson(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28
    lo, hi = judges.wilson(10, 10)
    assert 0.72 < lo < 0.73 and hi == 1.0
    with pytest.raises(ValueError):
        judges.wilson(11, 10)


# --- the pairwise logic, with stand-in judges that follow a rule ------------------------------------------

class RuleJudge:
    """A stand-in judge (Backend protocol) answering by a fixed rule on the replies shown as A and B."""

    name, model = "rule", "rule"

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            a = text.split("Reply A:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
            b = text.split("Reply B:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
            self.asked.append((r.id, a, b))
            verdict = self.rule(a, b)
            if verdict is Exception:
                out.append(Generation("", 0, 0, None, 0.0, "error", error="judge unavailable"))
            else:
                out.append(Generation(verdict, 10, 3, 0.01, 0.02, "stop"))
        return out


def _pairs(k: int) -> list[dict]:
    return [{"id": f"p{i}", "query": f"query {i}", "system_x": "tuned", "reply_x": f"RUDE reply {i}",
             "system_y": "base", "reply_y": f"polite reply {i}"} for i in range(k)]


def _judge(rule, k=10, seed=0):
    judge = RuleJudge(rule)
    return judge, judges.pairwise_judge(judge, judges.load_judge_prompt("pairwise"), "rude", _pairs(k), seed)


def test_position_bias_cancels_to_ties():
    judge, records = _judge(lambda a, b: "Winner: A")  # always the first position
    assert len(judge.asked) == 20  # every pair in both orders
    assert all(r["outcome"] == "tie" and r["winner"] == "tie" for r in records)
    assert {r["orders"]["xy"]["verdict"] for r in records} == {"A"} == {r["orders"]["yx"]["verdict"] for r in records}
    row = judges.win_rates(records)[("tuned", "base")]
    assert (row["wins"], row["ties"], row["losses"], row["n"]) == (0, 10, 0, 10)
    assert row["tie_rate"] == 1.0 and row["win_rate"] == 0.0


def test_both_orders_mapped_back_to_systems():
    rude_wins = lambda a, b: "Winner: A" if "RUDE" in a else "Winner: B"  # noqa: E731
    _, records = _judge(rude_wins)
    assert all(r["outcome"] == "x" and r["winner"] == "tuned" for r in records)
    for r in records:  # the judge saw the same reply win in both positions
        assert r["orders"]["xy"]["verdict"] == "A" and r["orders"]["yx"]["verdict"] == "B"
        assert r["orders"]["xy"]["winner"] == r["orders"]["yx"]["winner"] == "x"
    polite_wins = lambda a, b: "Winner: B" if "RUDE" in a else "Winner: A"  # noqa: E731
    _, records = _judge(polite_wins)
    assert all(r["outcome"] == "y" and r["winner"] == "base" for r in records)
    row = judges.win_rates(records)[("tuned", "base")]
    assert (row["wins"], row["losses"], row["loss_rate"]) == (0, 10, 1.0)


def test_win_plus_tie_wins_and_unparsable_is_recorded():
    _, records = _judge(lambda a, b: "Winner: A" if "RUDE" in a else "Winner: tie")
    assert all(r["outcome"] == "x" for r in records)  # won one order, tied the other
    _, records = _judge(lambda a, b: "Winner: A" if "RUDE" in a else "I cannot decide.")
    assert all(r["outcome"] == "unparsable" and r["winner"] is None for r in records)
    row = judges.win_rates(records)[("tuned", "base")]
    assert (row["n"], row["unparsable"], row["total"], row["win_rate"]) == (0, 10, 10, None)


def test_failed_judge_requests_are_recorded():
    _, records = _judge(lambda a, b: Exception if "RUDE" in a else "Winner: B")
    assert all(r["outcome"] == "failed" and r["orders"]["xy"]["error"] == "judge unavailable" for r in records)
    assert judges.win_rates(records)[("tuned", "base")]["failed"] == 10


@pytest.mark.parametrize("first, second, outcome", [
    ("x", "x", "x"), ("x", "tie", "x"), ("tie", "x", "x"), ("y", "y", "y"), ("tie", "y", "y"),
    ("x", "y", "tie"), ("y", "x", "tie"), ("tie", "tie", "tie"), (None, "x", "unparsable"), ("tie", None, "unparsable"),
])
def test_combine(first, second, outcome):
    assert judges.combine(first, second) == outcome


def test_order_asked_first_is_seeded_and_recorded():
    judge, records = _judge(lambda a, b: "Winner: A", k=40, seed=3)
    firsts = [r["first_order"] for r in records]
    assert set(firsts) == {"xy", "yx"}  # randomised, not always the same
    assert firsts == [r["first_order"] for r in _judge(lambda a, b: "Winner: A", k=40, seed=3)[1]]  # reproducible
    assert firsts != [r["first_order"] for r in _judge(lambda a, b: "Winner: A", k=40, seed=4)[1]]
    for i, r in enumerate(records):  # the order recorded first is the one asked first
        rid, a, _ = judge.asked[2 * i]
        assert rid == f"{r['id']}:{r['first_order']}"
        assert ("RUDE" in a) == (r["first_order"] == "xy")


def test_win_rates_counts_and_intervals():
    verdicts = iter(["x"] * 8 + ["tie"] + ["y"] + [None])  # per pair: who the rule favours
    plan = {f"p{i}": next(verdicts) for i in range(11)}

    def rule(a, b):
        pair = "p" + a.split()[-1]
        favoured = plan[pair]
        if favoured is None:
            return "no idea"
        if favoured == "tie":
            return "Winner: tie"
        shown_x = "RUDE" in a
        return "Winner: A" if (favoured == "x") == shown_x else "Winner: B"

    _, records = _judge(rule, k=11)
    row = judges.win_rates(records)[("tuned", "base")]
    assert (row["n"], row["wins"], row["ties"], row["losses"], row["unparsable"], row["total"]) == (10, 8, 1, 1, 1, 11)
    assert row["win_rate"] == 0.8 and [round(v, 3) for v in row["win_ci"]] == [0.490, 0.943]
    assert row["tie_ci"] == judges.wilson(1, 10) and row["loss_ci"] == judges.wilson(1, 10)


def test_absolute_judgements_summarised():
    """The absolute judge's replies as an evaluation summarises them (the tone_judge evaluator's scores,
    then evaluate.summarise): mean tone and addresses-problem rate over the parsed replies, an
    unparsable reply apart, a failed judge request as judge_failed."""
    tone_judge, params = get_evaluator("tone_judge"), parse_params("tone_judge", {"judge": "hf:smollm2-135m"})
    task = Task(name="tone", metrics=tone_judge.metrics(params, "judge"), prompt_variants=("default",),
                build_messages=lambda *args: [], score=lambda example, text: {},
                judges=((tone_judge, params, "judge"),))
    replies = ["Tone: 8\nAddresses problem: yes", "Tone: 4\nAddresses problem: no", "Tone: 8/10", None]
    records = [{"scores": tone_judge.judge.scores(text, params, "judge"), "backend": "hf", "model": "m",
                "prompt_variant": "default", "sampling": {}, "latency_s": 1.0, "ttft_s": 0.1, "input_tokens": 9,
                "output_tokens": 9, **({"judge_errors": {"judge": "timeout"}} if text is None else {})}
               for text in replies]
    summary = summarise(task, records)
    assert summary["n"] == 4 and summary["judge_failed"] == 1
    assert summary["metrics"] == {"judge.tone": 6.0, "judge.addresses_problem": 0.5,
                                  "judge.unparsable": pytest.approx(1 / 3)}
    # tone: the unparsable and the failed reply; unparsable: the failed one
    assert summary["not_scorable"] == {"judge.tone": 2, "judge.addresses_problem": 2, "judge.unparsable": 1}


def test_judge_backend_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="hf:<model>"):
        make_judge_backend("vllm:foo")


# --- distillation without a model: cost estimate, confirmation, failures -----------------------------------

class RuleTeacher:
    """A stand-in teacher (Backend protocol): echoes the query, or fails / answers empty by rule."""

    name, model = "openai", "gpt-4.1"

    def __init__(self, fail_on: str | None = None, empty_on: str | None = None):
        self.fail_on, self.empty_on, self.requests = fail_on, empty_on, 0

    def generate(self, requests, sampling):
        self.requests += len(requests)
        out = []
        for r in requests:
            q = r.messages[-1]["content"]
            if self.fail_on and self.fail_on in q:
                out.append(Generation("", 0, 0, None, 0.0, "error", error="RateLimitError: slow down"))
            else:
                out.append(Generation("" if self.empty_on and self.empty_on in q else f"Fine. About {q}", 20, 8,
                                      0.01, 0.05, "stop"))
        return out


def _queries(k: int) -> list[dict]:
    return [{"id": f"q{i}", "query": f"Where is my order number {i}? " + "It is late. " * 20} for i in range(k)]


def test_cost_estimate():
    est = distill_mod.estimate_cost("openai:gpt-4.1", PERSONA.teacher_prompt, ["hello"] * 100, 200)
    from ftscale.prices import load_prices

    prices = load_prices("configs/prices.yaml").inference("gpt-4.1")
    assert est["output_tokens"] == 100 * 120 and est["input_tokens"] > 100 * 10
    assert est["usd"] == pytest.approx(prices.per_request(est["input_tokens"], est["output_tokens"]))
    assert est["text"].startswith("teacher cost: estimated $")
    for local in ("hf:smollm2-135m", "openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1",
                  "openai:m@http://localhost:8000/v1", "openai:m@http://192.168.1.5:8000/v1"):
        est = distill_mod.estimate_cost(local, "p", ["hello"], 200)
        assert est["local"] and est["usd"] == 0.0 and "local: no per-token cost" in est["text"]
    assert distill_mod.estimate_cost("openai:my-model@https://api.example.com/v1", "p", ["hi"], 10)["usd"] is None
    assert distill_mod.parse_teacher("openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1") == (
        "openai", "Qwen/Qwen2.5-7B-Instruct", "http://127.0.0.1:8000/v1")
    with pytest.raises(FtscaleError, match="openai:<model>@<base_url>"):
        distill_mod.parse_teacher("vllm:foo")


def test_expensive_run_needs_confirmation(tmp_path):
    teacher, asked, logs = RuleTeacher(), [], []
    args = dict(teacher="openai:gpt-4.1", persona=PERSONA, queries=_queries(3000), n=3000,
                out_path=tmp_path / "train.jsonl", cache_path=tmp_path / "cache.jsonl", max_new_tokens=500,
                log=logs.append, backend=teacher, batch_size=500, progress=False)
    with pytest.raises(FtscaleError, match="not confirmed.*nothing was asked.*--yes"):
        distill_mod.distill(**args, confirm=lambda q: asked.append(q) or False)
    assert teacher.requests == 0 and not (tmp_path / "cache.jsonl").exists() and asked[0].startswith("spend about $")
    assert any("teacher cost: estimated $" in line for line in logs)
    distill_mod.distill(**args, yes=True)
    assert teacher.requests == 3000
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 3000


def test_teacher_failure_keeps_answers_and_resumes(tmp_path):
    cache, out, logs = tmp_path / "cache.jsonl", tmp_path / "train.jsonl", []
    queries = _queries(12)
    args = dict(teacher="openai:gpt-4.1", persona=PERSONA, queries=queries, n=12, out_path=out, cache_path=cache,
                log=logs.append, batch_size=5, progress=False)
    with pytest.raises(FtscaleError) as e:  # the second batch (q5..q9) has a request that fails
        distill_mod.distill(**args, backend=RuleTeacher(fail_on="number 7?"))
    assert "RateLimitError: slow down" in str(e.value)
    assert "9 of 12 answered" in str(e.value) and "run the same command again to continue" in str(e.value)
    assert len(cache.read_text().splitlines()) == 9 and not out.exists()
    # a run killed while writing leaves a torn last line: it is dropped and asked again
    with open(cache, "a") as f:
        f.write('{"key": "abc", "rep')
    teacher = RuleTeacher(empty_on="number 11?")
    distill_mod.distill(**args, backend=teacher)
    assert teacher.requests == 3  # q7, q10, q11 only
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 11  # q11's empty reply skipped, and said so
    assert "skipped 1 empty replies" in logs[-1]
    assert lines[0]["messages"] == [{"role": "system", "content": PERSONA.system_prompt},
                                    {"role": "user", "content": queries[0]["query"]},
                                    {"role": "assistant", "content": "Fine. About " + queries[0]["query"].strip()}]
    cached = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(cached) == 12 and {c["query_id"] for c in cached} == {q["id"] for q in queries}
    assert cached[0]["key"] == distill_mod.cache_key("openai:gpt-4.1", PERSONA.name, PERSONA.teacher_prompt,
                                                     queries[0]["query"])
    # another teacher prompt is another key: asked again
    teacher = RuleTeacher()
    other = SimpleNamespace(**{**vars(PERSONA), "teacher_prompt": "Be rude."})
    distill_mod.distill(**{**args, "persona": other, "n": 2}, backend=teacher)
    assert teacher.requests == 2


def test_distill_refuses_bad_input(tmp_path):
    args = dict(teacher="hf:smollm2-135m", persona=PERSONA, queries=QUERIES, out_path=tmp_path / "t.jsonl",
                cache_path=tmp_path / "c.jsonl", progress=False, backend=RuleTeacher())
    with pytest.raises(FtscaleError, match="only 4 queries"):
        distill_mod.distill(n=5, **args)
    (tmp_path / "c.jsonl").write_text("not json\n{}\n")
    with pytest.raises(FtscaleError, match=r"c.jsonl:1: not a distillation cache record"):
        distill_mod.distill(n=1, **args)


def test_command_line_refusals(tmp_path, capsys):
    persona = tmp_path / "persona.yaml"
    persona.write_text("name: rude\ndescription: a rude agent\nteacher_prompt: Be rude.\n"
                       "system_prompt: You are an agent.\njudge_rubric: rudeness\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    base = ["--persona", str(persona), "--queries", str(queries), "-n", "2", "--out", str(tmp_path / "t.jsonl")]
    assert distill_mod.main(["--teacher", "vllm:foo", *base]) == 2
    assert "openai:<model>@<base_url>" in capsys.readouterr().err
    assert distill_mod.main(["--teacher", "hf:smollm2-135m", *base, "-n", "9"]) == 2
    assert "only 4 queries" in capsys.readouterr().err
    persona.write_text("name: rude\n")
    assert distill_mod.main(["--teacher", "hf:smollm2-135m", *base]) == 2
    err = capsys.readouterr().err
    assert f"{persona}:1: " in err and "teacher_prompt" in err and "required key is missing" in err


# --- one small real run: distil through the embedded model, judge with it -------------------------------------

class Counting:
    """Passes requests to a real backend and counts them; can stop working after some calls."""

    def __init__(self, inner, fail_after_calls: int | None = None):
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.fail_after_calls, self.calls, self.requests = fail_after_calls, 0, 0

    def generate(self, requests, sampling):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise ConnectionError("the teacher went away")
        self.calls += 1
        self.requests += len(requests)
        return self.inner.generate(requests, sampling)


@pytest.fixture(scope="module")
def hf(embedded_model):
    """One intra-op thread: the real-model part is small, and next to another busy process (a
    benchmark, the rest of a suite run with -n) torch's spinning threads oversubscribe the cores: on
    two busy cores 4 x 32 tokens took 100 s with two threads, 1.3 s with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield make_backend("hf", model=embedded_model, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def distilled(hf, tmp_path_factory):
    """Distil 4 queries with the real model: killed after the first batch of 2, resumed, run again."""
    tmp = tmp_path_factory.mktemp("distill")
    out, cache = tmp / "train.jsonl", tmp / "cache.jsonl"
    args = dict(teacher="hf:smollm2-135m", persona=PERSONA, queries=QUERIES, n=4, out_path=out, cache_path=cache,
                max_new_tokens=32, batch_size=2, progress=False, log=lambda s: None)
    t0 = time.perf_counter()
    runs = [Counting(hf, fail_after_calls=1), Counting(hf), Counting(hf)]
    with pytest.raises(FtscaleError) as e:
        distill_mod.distill(**args, backend=runs[0])
    after_failure = cache.read_text().splitlines()
    distill_mod.distill(**args, backend=runs[1])
    first_output = out.read_text()
    distill_mod.distill(**args, backend=runs[2])
    return SimpleNamespace(out=out, cache=cache, error=str(e.value), after_failure=after_failure, runs=runs,
                           first_output=first_output, seconds=time.perf_counter() - t0)


def test_real_distillation_is_cached_and_resumable(distilled):
    assert "ConnectionError: the teacher went away" in distilled.error and "2 of 4 answered" in distilled.error
    assert len(distilled.after_failure) == 2
    assert [r.requests for r in distilled.runs] == [2, 2, 0]  # resumed with the other 2; then nothing asked
    assert distilled.out.read_text() == distilled.first_output
    cached = [json.loads(x) for x in distilled.cache.read_text().splitlines()]
    assert sorted(c["query_id"] for c in cached) == ["q1", "q2", "q3", "q4"]
    assert all(c["teacher"] == "hf:smollm2-135m" and c["sampling"]["max_new_tokens"] == 32 for c in cached)
    assert all(0 < c["output_tokens"] <= 32 for c in cached)
    from ftscale.datacheck import check_file

    assert check_file(distilled.out, min_examples=None).ok
    lines = [json.loads(x) for x in distilled.out.read_text().splitlines()]
    assert len(lines) == sum(bool(c["reply"].strip()) for c in cached)
    assert all(line["messages"][0] == {"role": "system", "content": PERSONA.system_prompt} for line in lines)


def test_real_judges(hf, distilled):
    t0 = time.perf_counter()
    replies = {c["query_id"]: c["reply"].strip() for c in map(json.loads, distilled.cache.read_text().splitlines())}
    items = [{"id": q["id"], "query": q["query"], "reply": replies[q["id"]]} for q in QUERIES if replies[q["id"]]]
    neutral = hf.generate([Request(q["id"], [{"role": "system", "content": "You are a helpful assistant."},
                                             {"role": "user", "content": q["query"]}]) for q in QUERIES],
                          Sampling(max_new_tokens=32))
    neutral = {q["id"]: g.text.strip() for q, g in zip(QUERIES, neutral)}

    # the judge-free HEURISTIC baseline, as the tone task's lexical_tone evaluator scores it
    from ftscale.eval.lexical_tone import DEFAULT_LEXICAL, count_markers

    lexical = get_evaluator("lexical_tone")
    for it in items:
        got = lexical.score(it["reply"], {}, parse_params("lexical_tone", {"persona": "rude"}), "lexical")
        rude = count_markers(it["reply"], DEFAULT_LEXICAL["tone_markers"])
        polite = count_markers(it["reply"], DEFAULT_LEXICAL["opposite_markers"])
        assert (got["lexical.tone_markers"], got["lexical.opposite_markers"]) == (rude, polite)
        assert got["lexical"] == (0.5 if rude + polite == 0 else rude / (rude + polite))

    absolute = judges.absolute_judge(hf, judges.load_judge_prompt("absolute"), PERSONA.judge_rubric, items)
    assert [r["id"] for r in absolute] == [it["id"] for it in items]
    for r in absolute:
        assert r["error"] is None and isinstance(r["judgement"], str)  # the judge answered
        assert r == {**r, **judges.parse_absolute(r["judgement"])}  # recorded exactly as parsed
        if r["parsed"]:
            assert 1 <= r["tone"] <= 10 and isinstance(r["addresses_problem"], bool)
        else:
            assert r["tone"] is None and r["addresses_problem"] is None
    # the same replies as the tone task's tone_judge evaluator scores them
    tone_judge, params = get_evaluator("tone_judge"), parse_params("tone_judge", {"judge": "hf:smollm2-135m"})
    for r in absolute:
        got = tone_judge.judge.scores(r["judgement"], params, "judge")
        assert got["judge.unparsable"] == (0.0 if r["parsed"] else 1.0) and got["judge.tone"] == r["tone"]
        addressed = r["addresses_problem"]
        assert got["judge.addresses_problem"] == (None if addressed is None else float(addressed))
    summary = {"n": len(absolute), "parsed": sum(r["parsed"] for r in absolute)}

    pairs = [{"id": it["id"], "query": it["query"], "system_x": "distilled", "reply_x": it["reply"],
              "system_y": "neutral", "reply_y": neutral[it["id"]] or "(no reply)"} for it in items]
    pairwise = judges.pairwise_judge(hf, judges.load_judge_prompt("pairwise"), PERSONA.judge_rubric, pairs, seed=0)
    for r in pairwise:
        assert set(r["orders"]) == {"xy", "yx"} and r["first_order"] in ("xy", "yx")
        for order, v in r["orders"].items():
            assert v["error"] is None and v["verdict"] == judges.parse_pairwise(v["judgement"])
        assert r["outcome"] == judges.combine(r["orders"]["xy"]["winner"], r["orders"]["yx"]["winner"])
    rates = judges.win_rates(pairwise)
    assert list(rates) == [("distilled", "neutral")]
    row = rates[("distilled", "neutral")]
    assert row["n"] == row["wins"] + row["ties"] + row["losses"]
    assert row["total"] == row["n"] + row["unparsable"] + row["failed"] == len(pairs)
    assert row["unparsable"] == sum(r["outcome"] == "unparsable" for r in pairwise)
    if row["n"]:
        assert row["win_rate"] + row["tie_rate"] + row["loss_rate"] == pytest.approx(1.0)
        for name in ("win", "tie", "loss"):
            lo, hi = row[f"{name}_ci"]
            assert 0.0 <= lo <= row[f"{name}_rate"] <= hi <= 1.0
    print(f"real-model part: distil {distilled.seconds:.1f} s, judges {time.perf_counter() - t0:.1f} s; "
          f"absolute {summary}; pairwise {row}")
