"""The evaluators for user-defined tasks, on outputs of the kinds models really produce."""

from __future__ import annotations

import json

import pytest

from ftscale.eval.evaluators import EVALUATORS, ParamsError, get_evaluator, parse_params
from ftscale.eval.llm_judge import judge_scores, parse_judgement, render_judge_prompt
from ftscale.eval.match_evaluators import confusion_matrix


def run(name: str, raw: dict | None, output: str, reference: dict | None = None, prefix: str | None = None) -> dict:
    """Score one example the way a task does: parse the parameters, then call the evaluator."""
    params = parse_params(name, raw)
    prefix = prefix or name
    scores = get_evaluator(name).score(output, reference or {}, params, prefix)
    metric_names = {m.name for m in get_evaluator(name).metrics(params, prefix)}
    assert metric_names <= scores.keys()  # every metric it declares, it reports
    assert all(k == prefix or k.startswith(prefix + ".") for k in scores)  # details prefixed too
    return scores


# --- exact_match -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, output, answer, expected", [
    ({}, "  Paris \n", "paris", 1.0),
    ({}, "New   York", "new york", 1.0),
    ({}, "Paris.", "Paris", 0.0),
    ({"ignore_punctuation": True}, "Paris.", "paris", 1.0),
    ({"case_sensitive": True}, "paris", "Paris", 0.0),
    ({"strip_whitespace": False}, "Paris\n", "Paris", 0.0),
    ({"numeric_tolerance": 0.01}, "1,234.5", 1234.505, 1.0),
    ({"numeric_tolerance": 0.01}, "1,234.52", "1234.5", 0.0),
    ({"numeric_tolerance": 0.01}, "1.01", "1.00", 1.0),  # exactly the tolerance, no float round-off
    ({"numeric_tolerance": 0}, "2,000,000", 2e6, 1.0),
    ({"numeric_tolerance": 0}, "1,23", "123", 0.0),  # not a thousands separator: compared as text
    ({"numeric_tolerance": 0.5}, "about 12", 12, 0.0),  # not a number: compared as text
    ({}, "12.0", 12, 0.0),  # without a tolerance numbers are text
    ({}, "NYC", ["New York", "NYC"], 1.0),  # a list: accepted alternatives
])
def test_exact_match(raw, output, answer, expected):
    assert run("exact_match", raw, output, {"answer": answer}) == {"exact_match": expected}


def test_exact_match_missing_reference_field_is_not_scorable():
    assert run("exact_match", {"field": "gold"}, "x", {"answer": "x"}) == {"exact_match": None}
    assert run("exact_match", {}, "x", {"answer": None}) == {"exact_match": None}
    assert get_evaluator("exact_match").needs(parse_params("exact_match", {"field": "gold"})) == ("gold",)


# --- json_schema -------------------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


@pytest.mark.parametrize("strict, output, expected", [
    (True, '{"name": "Ada", "age": 36}\n', 1.0),
    (True, '{"name": "Ada", "age": -1}', 0.0),
    (True, '{"name": "Ada"}', 0.0),
    (True, 'Here: {"name": "Ada", "age": 36}', 0.0),
    (False, 'Here: ```json\n{"name": "Ada", "age": 36}\n```', 1.0),
    (False, "no JSON at all", 0.0),
])
def test_json_schema_inline(strict, output, expected):
    s = run("json_schema", {"schema": SCHEMA, "strict": strict}, output)
    assert s["json_schema"] == expected
    assert (s["json_schema.error"] is None) == (expected == 1.0)


def test_json_schema_strict_judges_any_json_value():
    assert run("json_schema", {"schema": {"type": "null"}}, "null")["json_schema"] == 1.0
    assert run("json_schema", {"schema": SCHEMA}, "null") == {
        "json_schema": 0.0, "json_schema.error": "(top level): None is not of type 'object'"}


def test_json_schema_by_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "person.json").write_text(json.dumps(SCHEMA))
    monkeypatch.chdir(tmp_path)
    raw = {"schema_path": "schemas/person.json"}
    assert run("json_schema", raw, '{"name": "Ada", "age": 36}')["json_schema"] == 1.0
    s = run("json_schema", raw, '{"name": "Ada", "age": "36"}')
    assert s["json_schema"] == 0.0 and s["json_schema.error"].startswith("age:")
    with pytest.raises(ValueError, match="schema_path: no such file"):
        parse_params("json_schema", {"schema_path": "schemas/missing.json"})


def test_json_schema_invalid_or_ambiguous_schema_refused_at_parse_time():
    with pytest.raises(ValueError, match=r"^schema: invalid JSON schema at properties/age/type"):
        parse_params("json_schema", {"schema": {"type": "object", "properties": {"age": {"type": "integr"}}}})
    with pytest.raises(ValueError, match="exactly one of schema"):
        parse_params("json_schema", {})
    with pytest.raises(ValueError, match="exactly one of schema"):
        parse_params("json_schema", {"schema": SCHEMA, "schema_path": "x.json"})


# --- json_fields -------------------------------------------------------------------------------

def test_json_fields_per_field_accuracy():
    raw = {"fields": {"city": None, "population": {"numeric_tolerance": 1000}, "country": {"case_sensitive": True}}}
    reference = {"fields": {"city": "São Paulo", "population": 12_330_000, "country": "Brazil"}}
    output = 'Sure!\n```json\n{"city": "são paulo", "population": "12,330,500", "country": "brazil"}\n```'
    assert run("json_fields", raw, output, reference) == {
        "json_fields.city": 1.0, "json_fields.population": 1.0, "json_fields.country": 0.0, "json_fields.all": 0.0}


def test_json_fields_reference_missing_a_field_scores_none_for_that_field_only():
    raw = {"fields": ["name", "date", "amount"], "reference_field": None}
    reference = {"name": "ACME", "amount": 12.5}  # no date for this example
    s = run("json_fields", raw, '{"name": "Acme", "date": "2024-01-01", "amount": 12.50}', reference, prefix="inv")
    assert s == {"inv.name": 1.0, "inv.date": None, "inv.amount": 1.0, "inv.all": 1.0}
    assert run("json_fields", raw, "I could not find an invoice.", reference, prefix="inv") == {
        "inv.name": 0.0, "inv.date": None, "inv.amount": 0.0, "inv.all": 0.0}  # unparsable: wrong, not absent
    assert run("json_fields", raw, "{}", {}, prefix="inv")["inv.all"] is None  # nothing scorable


def test_json_fields_parameters_checked():
    with pytest.raises(ValueError, match=r"fields: repeated field names"):
        parse_params("json_fields", {"fields": ["a", "a"]})
    with pytest.raises(ValueError, match=r"fields.a.tolerance: unknown parameter"):
        parse_params("json_fields", {"fields": {"a": {"tolerance": 1}}})
    with pytest.raises(ValueError, match=r"fields: a field cannot be called 'all'"):
        parse_params("json_fields", {"fields": ["all"]})


# --- regex -------------------------------------------------------------------------------------

def test_regex_fullmatch_versus_search():
    raw = {"pattern": r"\d{3}-\d{4}"}
    assert run("regex", raw, "555-1234") == {"regex": 1.0, "regex.match": 1.0, "regex.groups": None}
    assert run("regex", raw, "Call 555-1234.")["regex"] == 0.0
    assert run("regex", raw | {"mode": "search"}, "Call 555-1234.")["regex"] == 1.0
    assert run("regex", {"pattern": "yes", "flags": ["IGNORECASE"]}, "YES")["regex"] == 1.0


def test_regex_named_groups_compared_with_the_reference():
    raw = {"pattern": r"in (?P<city>[A-Za-z ]+), (?P<year>\d{4})", "mode": "search"}
    ref = {"city": "paris", "year": "1889"}
    assert run("regex", raw, "Built in Paris, 1889.", ref)["regex"] == 1.0
    s = run("regex", raw, "Built in Lyon, 1889.", ref)
    assert (s["regex"], s["regex.match"], s["regex.groups"]) == (0.0, 1.0, {"city": "Lyon", "year": "1889"})
    assert run("regex", raw | {"compare_groups": False}, "Built in Lyon, 1889.", ref)["regex"] == 1.0
    assert run("regex", raw, "Built in Paris, 1889.", {"city": "paris"})["regex"] is None  # no year in reference
    assert run("regex", raw, "nothing here", ref) == {"regex": 0.0, "regex.match": 0.0, "regex.groups": None}
    assert get_evaluator("regex").needs(parse_params("regex", raw)) == ("city", "year")


def test_regex_checked_at_parse_time():
    with pytest.raises(ValueError, match="pattern: invalid regular expression"):
        parse_params("regex", {"pattern": "(unclosed"})
    with pytest.raises(ValueError, match=r"flags.0: Input should be"):
        parse_params("regex", {"pattern": "x", "flags": ["VERBOSE"]})
    with pytest.raises(ValueError, match="compare_groups: the pattern has no named groups"):
        parse_params("regex", {"pattern": "x", "compare_groups": True})


# --- choice ------------------------------------------------------------------------------------

CHOICE = {"labels": ["positive", "negative", "neutral"]}


@pytest.mark.parametrize("output, predicted", [
    ("Positive.", "positive"),
    ("The sentiment here is clearly NEGATIVE", "negative"),
    ("I cannot tell.", None),  # no label
    ("positive or negative, hard to say", None),  # two labels
    ("It is nonnegative", None),  # not a whole word
])
def test_choice_names_exactly_one_label(output, predicted):
    s = run("choice", CHOICE, output, {"label": "positive"})
    assert s["choice.predicted"] == predicted
    assert s["choice"] == float(predicted == "positive")


def test_choice_longer_label_shadows_the_shorter_inside_it():
    raw = {"labels": ["positive", "not positive"]}
    assert run("choice", raw, "Verdict: not positive", {"label": "not positive"})["choice.predicted"] == "not positive"


def test_choice_gold_missing_or_unknown_is_not_scorable():
    assert run("choice", CHOICE, "positive", {})["choice"] is None
    assert run("choice", CHOICE, "positive", {"label": "mixed"})["choice"] is None
    assert run("choice", CHOICE, "positive", {"label": "Positive"})["choice"] == 1.0


def test_confusion_matrix():
    params = parse_params("choice", CHOICE)
    outputs = ["positive", "negative", "positive and negative", "neutral", "positive"]
    refs = [{"label": g} for g in ["positive", "positive", "negative", "neutral", "unknown"]]
    scores = [get_evaluator("choice").score(o, r, params, "sent") for o, r in zip(outputs, refs)]
    scores.append(None)  # a failed request
    refs.append({"label": "negative"})
    m = confusion_matrix(scores, params, "sent", refs)
    assert m["positive"] == {"positive": 1, "negative": 1, "neutral": 0, "none": 0}
    assert m["negative"] == {"positive": 0, "negative": 0, "neutral": 0, "none": 2}
    assert m["neutral"] == {"positive": 0, "negative": 0, "neutral": 1, "none": 0}
    assert sum(sum(row.values()) for row in m.values()) == 5  # the unknown gold label is left out


def test_choice_labels_checked():
    with pytest.raises(ValueError, match="labels: List should have at least 2 items"):
        parse_params("choice", {"labels": ["yes"]})
    with pytest.raises(ValueError, match="labels: labels that read the same"):
        parse_params("choice", {"labels": ["Yes", "yes"]})


# --- llm_judge ---------------------------------------------------------------------------------

JUDGE = {"rubric": "Question: {input}\nAnswer: {output}\nReference: {reference}\nRate 1-10 as `Score: N`. "
                   'Reply as {{"score": N}} is NOT wanted.', "judge": "openai:gpt-4.1"}


@pytest.mark.parametrize("reply, raw", [
    ("The answer is close.\nScore: 7\n", 7),
    ("score : 10", 10),
    ("Score: 11", None),  # out of the scale
    ("Score: 0", None),
    ("Score: 7\nOn reflection,\nScore: 8", None),  # two scores
    ("I would give it a seven.", None),  # no score
    ("Score: 7.5", None),  # not an integer
])
def test_llm_judge_parsing(reply, raw):
    params = parse_params("llm_judge", JUDGE)
    assert parse_judgement(reply, params) == (None if raw is None else float(raw))
    s = judge_scores(reply, params, "judge")
    if raw is None:
        assert s == {"judge": None, "judge.raw": None, "judge.unparsable": 1.0}
    else:
        assert s == {"judge": (raw - 1) / 9, "judge.raw": raw, "judge.unparsable": 0.0}


def test_llm_judge_prompt_and_placeholder_scores():
    params = parse_params("llm_judge", JUDGE)
    msgs = render_judge_prompt(params, [{"role": "user", "content": "2+2?"}], "4", {"answer": 4})
    assert msgs == [{"role": "user", "content": 'Question: user: 2+2?\nAnswer: 4\nReference: {"answer": 4}\n'
                                                'Rate 1-10 as `Score: N`. Reply as {"score": N} is NOT wanted.'}]
    assert run("llm_judge", JUDGE, "4") == {"llm_judge": None, "llm_judge.unparsable": None}
    assert judge_scores(None, params, "j") == {"j": None, "j.raw": None, "j.unparsable": None}


@pytest.mark.parametrize("change, message", [
    ({"rubric": "Rate {output} against {gold}"}, r"rubric: unknown placeholder \{gold\}"),
    ({"rubric": "Rate {reference.answer}: {output}"}, r"rubric: unknown placeholder \{reference.answer\}"),
    ({"rubric": "Rate the answer {"}, "rubric: .*literal braces"),
    ({"rubric": "Rate {input}"}, r"rubric: the rubric must show the judge the \{output\}"),
    ({"judge": "anthropic:claude"}, "judge: expected <backend>:<model>"),
    ({"judge": "hf:"}, "judge: expected <backend>:<model>"),
    ({"scale_min": 5, "scale_max": 5}, "scale_max: must be above scale_min"),
    ({"pattern": r"score: \d+"}, "pattern: needs exactly one capturing group"),
])
def test_llm_judge_parameters_checked(change, message):
    with pytest.raises(ValueError, match=message):
        parse_params("llm_judge", JUDGE | change)


# --- length and refusal ------------------------------------------------------------------------

def test_length():
    assert run("length", None, "three short  words\n") == {"length": 3.0}
    assert run("length", {"unit": "chars"}, "abc de") == {"length": 6.0}
    assert not get_evaluator("length").metrics(parse_params("length", {}), "length")[0].higher_is_better
    with pytest.raises(ValueError, match="unit: Input should be 'words' or 'chars'"):
        parse_params("length", {"unit": "tokens"})


@pytest.mark.parametrize("raw, output, refused", [
    ({}, "I’m sorry, but I can’t help with that.", 1.0),  # typographic apostrophes
    ({}, "AS AN AI, I have no opinions.", 1.0),
    ({}, "Sure, here is the recipe.", 0.0),
    ({"markers": ["not allowed"]}, "That is Not Allowed here.", 1.0),
    ({"markers": ["not allowed"]}, "I'm sorry, no.", 0.0),
])
def test_refusal(raw, output, refused):
    assert run("refusal", raw, output)["refusal"] == refused


# --- reference_answer ----------------------------------------------------------------------------

@pytest.mark.parametrize("output, reference, expected", [
    ('{"answer": 33, "explanation": "x"}', {"answer": 33, "type": "number"}, 1.0),
    ('Sure! {"answer": "33.0004"} and more', {"answer": 33}, 1.0),  # the first object, in prose, a number as text
    ('[{"answer": 33}]', {"answer": 33}, 1.0),  # the first object, inside other JSON
    ('{"answer": 34}', {"answer": 33}, 0.0),
    ('{"answer": true}', {"answer": 1}, 0.0),
    ('{"answer": " thursday. "}', {"answer": "Thursday", "type": "string"}, 1.0),
    ('{"answer": "Friday"}', {"answer": "Thursday", "type": "string"}, 0.0),
    ('{"result": 33}', {"answer": 33}, 0.0),
    ("33", {"answer": 33}, 0.0),  # no JSON object: asked for and not given
    ('{"answer": 33}', {"type": "number"}, None),  # no reference answer: not scorable
])
def test_reference_answer(output, reference, expected):
    assert run("reference_answer", {}, output, reference)["reference_answer"] == expected


def test_reference_answer_needs_the_answer_in_every_example():
    evaluator = get_evaluator("reference_answer")
    assert evaluator.needs(parse_params("reference_answer", {})) == ("answer",) and evaluator.needs_all
    with pytest.raises(ValueError, match="field: unknown parameter"):
        parse_params("reference_answer", {"field": "x"})


# --- the registry and parameter checking ----------------------------------------------------------

def test_unknown_parameter_keys_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"^case_sensitve: unknown parameter; known: .*case_sensitive") as e:
        parse_params("exact_match", {"case_sensitve": True})
    assert e.value.problems[0][0] == "case_sensitve"
    for name in ("length", "refusal"):
        with pytest.raises(ValueError, match="bogus: unknown parameter"):
            parse_params(name, {"bogus": 1})


@pytest.mark.parametrize("name, raw, message", [
    ("exact_match", {"case_sensitive": "maybe"}, "case_sensitive: Input should be a valid boolean"),
    ("exact_match", {"numeric_tolerance": "a little"}, "numeric_tolerance: Input should be a valid number"),
    ("exact_match", {"numeric_tolerance": -1}, "numeric_tolerance: Input should be greater than or equal to 0"),
    ("exact_match", {"field": 3}, "field: Input should be a valid string"),
    ("choice", {"labels": "yes,no"}, "labels: Input should be a valid list"),
    ("json_schema", {"schema": "object"}, "schema: Input should be a valid dictionary"),
    ("refusal", {"markers": [""]}, "markers: a marker cannot be empty"),
    ("exact_match", ["field"], r"\(parameters\): expected a mapping"),
])
def test_wrong_parameter_types_refused(name, raw, message):
    with pytest.raises(ValueError, match=message):
        parse_params(name, raw)


def test_several_problems_reported_together():
    with pytest.raises(ParamsError) as e:
        parse_params("exact_match", {"case_sensitive": "maybe", "extra": 1})
    assert {key for key, _ in e.value.problems} == {"case_sensitive", "extra"}


def test_unknown_evaluator_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown evaluator 'exact'; known: addresses_problem, agreement_exact, agreement_json, agreement_judge, choice, exact_match"):
        get_evaluator("exact")
    with pytest.raises(KeyError, match="exact"):
        parse_params("exact", {})
    assert {"exact_match", "json_schema", "json_fields", "regex", "choice", "llm_judge", "length",
            "refusal", "reference_answer"} <= EVALUATORS.keys()
