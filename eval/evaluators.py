"""Per-example evaluators for user-defined tasks: small pure functions, registered by name.

A task file names evaluators and their parameters; each evaluator scores one example from its
output text and reference dict alone, so scores can be recomputed from `generations.jsonl` and
come out the same whichever backend produced the text.

An evaluator is four callables and a parameter model (see `Evaluator`):
  * `params`: a `Strict` pydantic model of its YAML parameters (unknown keys refused, types
    checked, and anything that can be checked before a run - regexes, schemas - checked then);
  * `metrics(params, prefix)`: the metrics it reports, each named `<prefix>` or `<prefix>.<x>`;
  * `needs(params)`: the reference fields one example must have to be scored;
  * `score(output, reference, params, prefix)`: `{metric name: 1.0 | 0.0 | float | None}`,
    where None means "not scorable for this example" (the reference lacks what is needed) -
    never a guess. Extra keys are details (the predicted label, an error message), prefixed too.

Adding one is one function plus one registry line:

    def word_count(output: str, reference: dict, params: NoParams, prefix: str) -> dict:
        '''`<prefix>`: words in the output.'''
        return {prefix: float(len(output.split()))}

    register(Evaluator("word_count", NoParams, one_metric("words in the output", False), no_needs, word_count))

(and a `Strict` subclass for its parameters, if it has any).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

# Absolute, as in eval/report.py: the same import works from a checkout and when installed.
from ftscale.config import Strict

from .backends import ModelSpec
from .tasks import Metric


@dataclass(frozen=True)
class JudgeHooks:
    """What a judge evaluator adds: its verdict is not a function of (output, reference), so its
    model is asked in a batch after generation (eval/evaluate.py: judge_pass), and the reply is
    kept in the generations so the scores can be parsed again without asking twice."""

    # (params, input: the user's message, output, reference) -> the judge's chat messages
    messages: Callable[[Strict, Any, str, Any], list[dict]]
    # (the judge's reply or None when its request failed, params, prefix) -> scores
    scores: Callable[[str | None, Strict, str], dict]


@dataclass(frozen=True)
class Evaluator:
    name: str  # registry name, e.g. "exact_match"
    params: type[Strict]  # its YAML parameters
    metrics: Callable[[Strict, str], tuple[Metric, ...]]  # (params, prefix) -> metrics reported
    needs: Callable[[Strict], tuple[str, ...]]  # reference fields one example needs
    score: Callable[[str, dict, Strict, str], dict]  # (output, reference, params, prefix) -> scores
    judge: JudgeHooks | None = None  # a judge evaluator: params has `judge` and `max_new_tokens`


EVALUATORS: dict[str, Evaluator] = {}


def register(e: Evaluator) -> Evaluator:
    # Refused rather than replaced: two evaluators under one name would score silently differently.
    if e.name in EVALUATORS:
        raise ValueError(f"evaluator {e.name!r} is already registered")
    EVALUATORS[e.name] = e
    return e


def get_evaluator(name: str) -> Evaluator:
    if name not in EVALUATORS:
        raise KeyError(f"unknown evaluator {name!r}; known: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[name]


class ParamsError(ValueError):
    """Invalid evaluator parameters; `problems` holds (key, reason) pairs so a caller can point at
    the YAML line of each key."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


class _KeyProblem(ValueError):
    """Raised by cross-field checks, whose pydantic errors carry no key, to say which key is wrong."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(reason)


def _known_keys(model: type[Strict]) -> str:
    return ", ".join(f.alias or name for name, f in model.model_fields.items())


def parse_params(name: str, raw: dict | None) -> Strict:
    """The evaluator's parameters, validated; ParamsError (a ValueError) with `<key>: <reason>`."""
    model = get_evaluator(name).params
    if raw is None:  # `- exact_match:` with nothing under it in YAML
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError([("(parameters)", f"expected a mapping of parameters, got {type(raw).__name__}")])
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(part) for part in e["loc"])
            cause = (e.get("ctx") or {}).get("error")
            if isinstance(cause, _KeyProblem):
                key, reason = cause.key, str(cause)
            elif isinstance(cause, Exception):
                reason = str(cause)  # our own message, without pydantic's "Value error, " in front
            elif e["type"] == "extra_forbidden":
                reason = "unknown parameter" + (f"; known: {_known_keys(model)}" if len(e["loc"]) == 1 else "")
            else:
                reason = e["msg"]
            problems.append((key or "(parameters)", reason))
        raise ParamsError(problems) from None


# --- helpers for writing evaluators -----------------------------------------------------------

class NoParams(Strict):
    """For evaluators without parameters: any key given is refused."""


def one_metric(description: str, higher_is_better: bool = True) -> Callable[[Strict, str], tuple[Metric, ...]]:
    """`metrics` for an evaluator that reports one metric, named by the prefix alone."""
    return lambda params, prefix: (Metric(prefix, description, higher_is_better),)


def no_needs(params: Strict) -> tuple[str, ...]:
    return ()


# --- text comparison, shared by exact_match, json_fields and regex ----------------------------

class TextMatch(Strict):
    """How two texts are compared; the same options wherever an evaluator compares text."""

    case_sensitive: bool = False
    strip_whitespace: bool = Field(True, description="strip the ends and collapse inner runs of whitespace to one space")
    ignore_punctuation: bool = Field(
        False, description="drop Unicode punctuation (signs and decimal points too: use numeric_tolerance for numbers)")
    numeric_tolerance: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="when both sides read as numbers (1,234.5 allowed), equal if within this absolute difference; "
                    "0 = the same number however written")


# Thousands separators only in groups of three ("1,234"), so a decimal comma ("1,5") is not misread.
_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def as_number(text: str) -> Decimal | None:
    """The number a text spells, or None. Decimal, so a tolerance of 0.01 means exactly 0.01."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def as_text(value: Any) -> str:
    """A JSON scalar as text: strings as they are, others as JSON writes them (true, null); a float
    with no fraction reads as the integer, since JSON does not tell 33 from 33.0."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def normalise(text: str, opts: TextMatch) -> str:
    text = unicodedata.normalize("NFC", text)  # composed and decomposed accents are the same letter
    if opts.ignore_punctuation:
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    if opts.strip_whitespace:
        text = " ".join(text.split())
    return text if opts.case_sensitive else text.casefold()


def texts_equal(predicted: str, expected: str, opts: TextMatch) -> bool:
    if opts.numeric_tolerance is not None:
        a, b = as_number(predicted), as_number(expected)
        if a is not None and b is not None:
            return abs(a - b) <= Decimal(repr(opts.numeric_tolerance))
    return normalise(predicted, opts) == normalise(expected, opts)


def values_equal(predicted: Any, expected: Any, opts: TextMatch) -> bool:
    """JSON values: objects key by key, lists item by item, scalars as text under `opts`."""
    if isinstance(expected, dict):
        return (isinstance(predicted, dict) and predicted.keys() == expected.keys()
                and all(values_equal(predicted[k], expected[k], opts) for k in expected))
    if isinstance(expected, list):
        return (isinstance(predicted, list) and len(predicted) == len(expected)
                and all(values_equal(p, e, opts) for p, e in zip(predicted, expected)))
    if isinstance(predicted, (dict, list)):
        return False
    return texts_equal(as_text(predicted), as_text(expected), opts)


def _matches_reference(predicted: str | None, expected: Any, opts: TextMatch) -> float | None:
    """1.0/0.0 for a text against a reference value: a scalar, or a list of accepted alternatives.
    None when the reference gives nothing to compare with (missing, null, empty list, an object)."""
    alternatives = expected if isinstance(expected, list) else [expected]
    if not alternatives or any(a is None or isinstance(a, (dict, list)) for a in alternatives):
        return None
    if predicted is None:
        return 0.0
    return float(any(texts_equal(predicted, as_text(a), opts) for a in alternatives))


# --- JSON in model output ----------------------------------------------------------------------

_decoder = json.JSONDecoder()
_NOT_JSON = object()


def whole_json(text: str) -> Any:
    """The one JSON value the whole text is (surrounding whitespace aside), else _NOT_JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def first_json_object(text: str) -> dict | None:
    """The first JSON object anywhere in the text (models wrap it in prose or code fences)."""
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = _decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


# --- exact_match ---------------------------------------------------------------------------------

class ExactMatchParams(TextMatch):
    field: str = Field("answer", description="reference field holding the expected text")


def exact_match(output: str, reference: dict, params: ExactMatchParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the whole output equals the reference field under the text options
    (a list in the reference is a set of accepted answers); None when the reference lacks it."""
    return {prefix: _matches_reference(output, reference.get(params.field), params)}


register(Evaluator("exact_match", ExactMatchParams, one_metric("the output equals the reference answer"),
                   lambda p: (p.field,), exact_match))


# --- json_schema ---------------------------------------------------------------------------------

def _checked_schema(schema: Any, key: str):
    """A validator for the schema, or _KeyProblem naming what is wrong with it."""
    if not isinstance(schema, dict):
        raise _KeyProblem(key, f"a JSON schema must be an object, got {type(schema).__name__}")
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise _KeyProblem(key, f"invalid JSON schema at {where}: {e.message}") from None
    return cls(schema)


class JsonSchemaParams(Strict):
    schema_: dict | None = Field(None, alias="schema", description="the JSON schema, inline")
    schema_path: str | None = Field(None, description="a JSON schema file, relative to the working directory")
    strict: bool = Field(True, description="true: the whole output is one JSON value; false: the first JSON object in it")
    _validator: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self):
        # Loaded and checked now, so a broken schema stops the run before any generation.
        if (self.schema_ is None) == (self.schema_path is None):
            raise _KeyProblem("schema", "give exactly one of schema (inline) and schema_path")
        if self.schema_ is not None:
            self._validator = _checked_schema(self.schema_, "schema")
            return self
        path = Path(self.schema_path)
        if not path.is_file():
            raise _KeyProblem("schema_path", f"no such file: {path}")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise _KeyProblem("schema_path", f"{path} is not JSON: {e}") from None
        self._validator = _checked_schema(schema, "schema_path")
        return self


def json_schema(output: str, reference: dict, params: JsonSchemaParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output parses as JSON (the whole output, or with strict: false the
    first JSON object in it) and is valid under the schema. Detail `<prefix>.error`: why not."""
    if params.strict:
        value = whole_json(output)  # JSON `null` is a value, and the schema decides on it
        if value is _NOT_JSON:
            return {prefix: 0.0, f"{prefix}.error": "not JSON"}
    else:
        value = first_json_object(output)
        if value is None:
            return {prefix: 0.0, f"{prefix}.error": "no JSON object found"}
    error = best_match(params._validator.iter_errors(value))  # the most relevant, not just the first
    if error is None:
        return {prefix: 1.0, f"{prefix}.error": None}
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return {prefix: 0.0, f"{prefix}.error": f"{where}: {error.message}"[:300]}


register(Evaluator("json_schema", JsonSchemaParams, one_metric("the output is JSON valid under the schema"),
                   no_needs, json_schema))


# --- json_fields ---------------------------------------------------------------------------------

class JsonFieldsParams(Strict):
    fields: dict[str, TextMatch] = Field(
        description="field names, or a mapping field -> text options (case_sensitive, numeric_tolerance, ...)")
    reference_field: str | None = Field(
        "fields", description="reference key holding the expected object; null: the reference itself")

    @field_validator("fields", mode="before")
    @classmethod
    def _as_mapping(cls, v):
        if isinstance(v, list):
            if not all(isinstance(name, str) for name in v):
                raise ValueError("field names must be strings")
            if len(set(v)) != len(v):
                raise ValueError(f"repeated field names: {sorted(n for n, c in Counter(v).items() if c > 1)}")
            v = dict.fromkeys(v)
        if isinstance(v, dict):
            v = {name: {} if opts is None else opts for name, opts in v.items()}  # `name:` with no options
            if not v:
                raise ValueError("name at least one field")
            if "all" in v:  # its metric would collide with `<prefix>.all`
                raise ValueError("a field cannot be called 'all'")
        return v


def _expected_object(reference: dict, params: JsonFieldsParams) -> dict | None:
    obj = reference if params.reference_field is None else reference.get(params.reference_field)
    return obj if isinstance(obj, dict) else None


def json_fields(output: str, reference: dict, params: JsonFieldsParams, prefix: str) -> dict:
    """`<prefix>.<field>`: 1.0 when the first JSON object in the output has the field equal to the
    reference's (None when the reference lacks the field; a reference null is an expected null).
    `<prefix>.all`: every scorable field right (None when none is scorable). Output without a
    JSON object gets 0.0 for every scorable field: it was asked for and not given."""
    expected = _expected_object(reference, params) or {}
    got = first_json_object(output)
    out: dict[str, Any] = {}
    for name, opts in params.fields.items():
        if name not in expected:
            out[f"{prefix}.{name}"] = None
        else:
            right = got is not None and name in got and values_equal(got[name], expected[name], opts)
            out[f"{prefix}.{name}"] = float(right)
    scorable = [v for v in out.values() if v is not None]
    out[f"{prefix}.all"] = float(all(scorable)) if scorable else None
    return out


def _json_fields_metrics(params: JsonFieldsParams, prefix: str) -> tuple[Metric, ...]:
    return (*(Metric(f"{prefix}.{name}", f"the output's {name!r} equals the reference's") for name in params.fields),
            Metric(f"{prefix}.all", "every field the reference gives is right"))


register(Evaluator("json_fields", JsonFieldsParams, _json_fields_metrics,
                   lambda p: tuple(p.fields) if p.reference_field is None else (p.reference_field,), json_fields))


# --- regex ---------------------------------------------------------------------------------------

_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


class RegexParams(TextMatch):
    """The text options (case_sensitive, ...) apply to comparing groups with the reference;
    matching itself follows `flags`."""

    pattern: str
    mode: Literal["fullmatch", "search"] = "fullmatch"
    flags: list[Literal["IGNORECASE", "MULTILINE", "DOTALL"]] = Field(default_factory=list)
    compare_groups: bool | None = Field(
        None, description="compare each named group with the reference field of its name; default: when there are any")
    _regex: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _compile(self):
        flags = 0
        for f in self.flags:
            flags |= _FLAGS[f]
        try:
            self._regex = re.compile(self.pattern, flags)
        except re.error as e:
            raise _KeyProblem("pattern", f"invalid regular expression: {e}") from None
        if self.compare_groups and not self._regex.groupindex:
            raise _KeyProblem("compare_groups", "the pattern has no named groups to compare")
        if self.compare_groups is None:
            self.compare_groups = bool(self._regex.groupindex)
        return self

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._regex.groupindex) if self.compare_groups else ()


def regex(output: str, reference: dict, params: RegexParams, prefix: str) -> dict:
    """`<prefix>.match`: the pattern matches (the whole output, or anywhere with mode: search).
    `<prefix>`: it matches and, when comparing groups, each named group equals the reference
    field of its name; None when the reference lacks one of those fields.
    Detail `<prefix>.groups`: the named groups captured (null when no match)."""
    m = params._regex.fullmatch(output) if params.mode == "fullmatch" else params._regex.search(output)
    out: dict[str, Any] = {f"{prefix}.match": float(m is not None),
                           f"{prefix}.groups": m.groupdict() if m and params._regex.groupindex else None}
    results = [_matches_reference(m.group(g) if m else None, reference.get(g), params) for g in params.groups]
    if any(r is None for r in results):
        out[prefix] = None
    else:
        out[prefix] = float(m is not None and all(results))
    return out


def _regex_metrics(params: RegexParams, prefix: str) -> tuple[Metric, ...]:
    what = "the pattern matches and its named groups equal the reference" if params.groups else "the pattern matches"
    return Metric(prefix, what), Metric(f"{prefix}.match", "the pattern matches at all")


register(Evaluator("regex", RegexParams, _regex_metrics, lambda p: p.groups, regex))


# --- choice --------------------------------------------------------------------------------------

class ChoiceParams(Strict):
    labels: list[str] = Field(min_length=2)
    field: str = Field("label", description="reference field holding the gold label")
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _distinct(self):
        keys = [self.key(label) for label in self.labels]
        if any(not k for k in keys):
            raise _KeyProblem("labels", "a label cannot be empty")
        repeated = sorted({label for label, k in zip(self.labels, keys) if keys.count(k) > 1})
        if repeated:
            raise _KeyProblem("labels", f"labels that read the same: {repeated}")
        return self

    def key(self, label: str) -> str:
        """How a label is recognised: spacing never matters, case only when case_sensitive."""
        label = " ".join(label.split())
        return label if self.case_sensitive else label.casefold()

    def canonical(self, value: Any) -> str | None:
        """The label a reference value names, as written in `labels`; None if it names none."""
        if not isinstance(value, str):
            return None
        return next((label for label in self.labels if self.key(label) == self.key(value)), None)


def _label_spans(label: str, text: str, case_sensitive: bool) -> list[tuple[int, int]]:
    # Lookarounds rather than \b, so labels that start or end with a symbol ("C++") work too.
    body = r"\s+".join(re.escape(word) for word in label.split())
    flags = 0 if case_sensitive else re.IGNORECASE
    return [m.span() for m in re.finditer(rf"(?<!\w){body}(?!\w)", text, flags)]


def labels_named(output: str, params: ChoiceParams) -> list[str]:
    """The labels the output names as whole words. An occurrence inside a longer label's occurrence
    does not count ("positive" in "not positive")."""
    spans = {label: _label_spans(label, output, params.case_sensitive) for label in params.labels}

    def inside_another(label, span):
        return any(other != label and o[0] <= span[0] and span[1] <= o[1] and o != span
                   for other, others in spans.items() for o in others)

    return [label for label, ss in spans.items() if any(not inside_another(label, s) for s in ss)]


def choice(output: str, reference: dict, params: ChoiceParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output names exactly one label and it is the reference's (none or
    several named: 0.0); None when the reference's value is missing or not one of the labels.
    Details: `<prefix>.predicted` (the label, or None), `<prefix>.found` (every label named)."""
    found = labels_named(output, params)
    predicted = found[0] if len(found) == 1 else None
    gold = params.canonical(reference.get(params.field))
    return {prefix: None if gold is None else float(predicted == gold),
            f"{prefix}.predicted": predicted, f"{prefix}.found": found}


def confusion_matrix(records_scores: list[dict | None], params: ChoiceParams, prefix: str,
                     references: list[dict]) -> dict[str, dict[str, int]]:
    """gold label -> predicted label or "none" -> count, every cell present (zeros too), in label
    order. Examples whose gold label is missing or unknown are left out; a failed request (scores
    None) counts as "none", as failures count against the system elsewhere."""
    if len(records_scores) != len(references):
        raise ValueError(f"{len(records_scores)} score records but {len(references)} references")
    matrix = {gold: dict.fromkeys([*params.labels, "none"], 0) for gold in params.labels}
    for scores, reference in zip(records_scores, references):
        gold = params.canonical(reference.get(params.field))
        if gold is not None:
            predicted = (scores or {}).get(f"{prefix}.predicted") or "none"
            matrix[gold][predicted] = matrix[gold].get(predicted, 0) + 1
    return matrix


register(Evaluator("choice", ChoiceParams, one_metric("the output names the reference label, and only it"),
                   lambda p: (p.field,), choice))


# --- llm_judge (the pure parts; the judge model is called in a batch pass) -----------------------

_PLACEHOLDERS = ("input", "output", "reference")
# a vLLM server is an OpenAI-compatible endpoint: openai:<served name> with OPENAI_BASE_URL
_BACKENDS = ("hf", "openai")


class LlmJudgeParams(Strict):
    rubric: str = Field(description="the judge's prompt; placeholders {input}, {output}, {reference}; "
                                    "literal braces doubled: {{ }}")
    scale_min: int = 1
    scale_max: int = 10
    pattern: str = Field(r"(?im)^\s*score\s*:\s*(\d+)\s*$", description="regex whose one group captures the score")
    judge: str = Field(description="hf:<model ref> (in-process) or openai:<model> (OpenAI, or a vLLM server via OPENAI_BASE_URL)")
    max_new_tokens: int = Field(64, ge=1, description="the judge's reply length")
    _regex: Any = PrivateAttr(None)

    @field_validator("rubric")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as e:  # a lone brace
            raise ValueError(f"{e} (write literal braces as {{{{ and }}}})") from None
        for name, spec, conv in fields:
            # Only bare names: str.format would also run {reference.x}, {output!r} and {input:>9}
            if name not in _PLACEHOLDERS or spec or conv:
                written = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ValueError(f"unknown placeholder {{{written}}}; "
                                 f"known: {{input}}, {{output}}, {{reference}} (literal braces: {{{{ }}}})")
        if "output" not in {name for name, _, _ in fields}:
            raise ValueError("the rubric must show the judge the {output}")
        return v

    @property
    def placeholders(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.rubric) if name is not None}

    @field_validator("judge")
    @classmethod
    def _backend_model(cls, v: str) -> str:
        backend, _, model = v.partition(":")
        if backend not in _BACKENDS or not model.strip():
            raise ValueError(f"expected <backend>:<model> with backend one of {', '.join(_BACKENDS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.scale_min >= self.scale_max:
            raise _KeyProblem("scale_max", f"must be above scale_min ({self.scale_min})")
        try:
            self._regex = re.compile(self.pattern)
        except re.error as e:
            raise _KeyProblem("pattern", f"invalid regular expression: {e}") from None
        if self._regex.groups != 1:
            raise _KeyProblem("pattern", f"needs exactly one capturing group (the score), has {self._regex.groups}")
        return self


def _as_prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)  # a chat transcript
    return json.dumps(value, ensure_ascii=False)


def render_judge_prompt(params: LlmJudgeParams, input_text: str | list[dict], output: str,
                        reference: dict | str | None) -> list[dict]:
    """The chat messages for the judge: the rubric with its placeholders filled (chat messages
    given as input become a `role: content` transcript, a reference dict becomes JSON)."""
    if reference is None and "reference" in params.placeholders:
        raise ValueError("llm_judge: the rubric shows {reference} but this example has no reference")
    content = params.rubric.format(input=_as_prompt_text(input_text), output=output,
                                   reference="" if reference is None else _as_prompt_text(reference))
    return [{"role": "user", "content": content}]


def parse_judgement(text: str | None, params: LlmJudgeParams) -> float | None:
    """The judge's score: exactly one match of the pattern, an integer within the scale. Anything
    else (no score, two scores, out of range, not an integer) is None: unparsable, never guessed."""
    if text is None:
        return None
    matches = list(params._regex.finditer(text))
    if len(matches) != 1:
        return None
    raw = matches[0].group(1)
    if raw is None or not re.fullmatch(r"[+-]?\d+", raw.strip()):
        return None
    value = int(raw)
    return float(value) if params.scale_min <= value <= params.scale_max else None


def judge_scores(judgement_text: str | None, params: LlmJudgeParams, prefix: str) -> dict:
    """One example's scores from the judge's reply: `<prefix>` the score scaled to [0, 1],
    `<prefix>.raw` the score as the judge gave it, `<prefix>.unparsable` 1.0 when the reply holds
    no valid score. A missing reply (the judge request failed) scores None throughout."""
    if judgement_text is None:
        return {prefix: None, f"{prefix}.raw": None, f"{prefix}.unparsable": None}
    value = parse_judgement(judgement_text, params)
    if value is None:
        return {prefix: None, f"{prefix}.raw": None, f"{prefix}.unparsable": 1.0}
    return {prefix: (value - params.scale_min) / (params.scale_max - params.scale_min),
            f"{prefix}.raw": int(value), f"{prefix}.unparsable": 0.0}


def llm_judge(output: str, reference: dict, params: LlmJudgeParams, prefix: str) -> dict:
    """Placeholder scores: the judge's verdict is not a function of (output, reference), so the
    scores come from a later batch pass (render_judge_prompt -> judge model -> judge_scores),
    which replaces these Nones. `<prefix>`: the judge's score scaled to [0, 1];
    `<prefix>.unparsable`: 1.0 when the judge's reply held no valid score."""
    return {prefix: None, f"{prefix}.unparsable": None}


def _llm_judge_metrics(params: LlmJudgeParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(prefix, f"the judge's score ({params.scale_min}-{params.scale_max}) scaled to [0, 1]"),
            Metric(f"{prefix}.unparsable", "the judge's reply held no valid score", higher_is_better=False))


register(Evaluator("llm_judge", LlmJudgeParams, _llm_judge_metrics, no_needs, llm_judge,
                   JudgeHooks(render_judge_prompt, judge_scores)))


# --- length and refusal: diagnostics -------------------------------------------------------------

class LengthParams(Strict):
    unit: Literal["words", "chars"] = "words"  # tokens depend on the tokenizer: the backend counts those


def length(output: str, reference: dict, params: LengthParams, prefix: str) -> dict:
    """`<prefix>`: the output's length in words (whitespace-separated) or characters."""
    return {prefix: float(len(output.split()) if params.unit == "words" else len(output))}


register(Evaluator("length", LengthParams, lambda p, prefix: (Metric(prefix, f"output length in {p.unit}", False),),
                   no_needs, length))


DEFAULT_REFUSAL_MARKERS = (
    "i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "as an ai", "i am unable", "i'm unable",
    "i won't", "i will not", "i'm not able to", "i am not able to", "i must decline",
)


def _plain(text: str) -> str:
    return text.replace("\u2019", "'").casefold()  # models write both I can't and I can’t


class RefusalParams(Strict):
    markers: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_MARKERS), min_length=1,
                               description="phrases that mark a refusal (case-insensitive substrings)")

    @field_validator("markers")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not m.strip() for m in v):
            raise ValueError("a marker cannot be empty (it would mark every output a refusal)")
        return v


def refusal(output: str, reference: dict, params: RefusalParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output contains a refusal marker (a diagnostic: "I can't stress
    enough" counts too). Detail `<prefix>.marker`: the first marker found, or None."""
    text = _plain(output)
    marker = next((m for m in params.markers if _plain(m) in text), None)
    return {prefix: float(marker is not None), f"{prefix}.marker": marker}


register(Evaluator("refusal", RefusalParams, one_metric("the output refuses", higher_is_better=False),
                   no_needs, refusal))


# --- lexical_tone: the tone task's judge-free baseline (HEURISTIC) -------------------------------

class LexicalToneParams(Strict):
    persona: str = Field("rude", description="a persona in configs/personas/ (or a path): whose marker words count")


def lexical_tone_evaluator(output: str, reference: dict, params: LexicalToneParams, prefix: str) -> dict:
    """HEURISTIC, not a judge: `<prefix>` = persona-tone markers / (tone + opposite markers), 0.5 when
    neither occurs (eval/lexical_tone.py). Details: `<prefix>.tone_markers`, `<prefix>.opposite_markers`."""
    from .lexical_tone import lexical_tone

    found = lexical_tone(output, params.persona)
    return {prefix: found["lexical_tone"], f"{prefix}.tone_markers": found["tone_markers"],
            f"{prefix}.opposite_markers": found["opposite_markers"]}


register(Evaluator("lexical_tone", LexicalToneParams,
                   one_metric("HEURISTIC lexical tone: share of the persona's marker words among tone markers"),
                   no_needs, lexical_tone_evaluator))


# --- addresses_problem: the tone task's judge-free helpfulness check (HEURISTIC) ----------------

class AddressesProblemParams(Strict):
    pass  # nothing to set: it reads the reference's query and product


def addresses_problem_evaluator(output: str, reference: dict, params: AddressesProblemParams, prefix: str) -> dict:
    """HEURISTIC, not a judge: `<prefix>` = 1.0 when the reply names the order (number or product) and a
    next step (eval/addresses_problem.py). Details: `<prefix>.names_order`, `<prefix>.next_step`."""
    from .addresses_problem import addresses_problem

    found = addresses_problem(output, reference)
    return {prefix: float(found["addresses"]), f"{prefix}.names_order": float(found["names_order"]),
            f"{prefix}.next_step": float(found["next_step"])}


register(Evaluator("addresses_problem", AddressesProblemParams,
                   one_metric("HEURISTIC: the reply names the order or product and states a next step"),
                   lambda p: ("query", "product"), addresses_problem_evaluator))


# --- tone_judge: the absolute judge of the tone task (eval/judges.py) as an evaluator ------------

class ToneJudgeParams(Strict):
    judge: ModelSpec = Field(description="hf:<model ref> (in-process) or openai:<model>[@<base_url>] (OpenAI, a vLLM server)")
    persona: str = Field("rude", description="a persona in configs/personas/ (or a path): its judge_rubric is the target tone")
    prompt: Path | None = Field(None, description="an absolute judge prompt YAML (default configs/judges/absolute.yaml)")
    max_new_tokens: int | None = Field(None, ge=1, description="the judge's reply length (default: the prompt file's)")
    _prompt: Any = PrivateAttr(None)
    _rubric: str = PrivateAttr("")

    @model_validator(mode="after")
    def _load(self):
        from ftscale.data.personas import load_persona
        from ftscale.errors import FtscaleError

        from .judges import load_judge_prompt

        try:
            self._rubric = load_persona(self.persona).judge_rubric
        except (FtscaleError, FileNotFoundError) as e:
            raise _KeyProblem("persona", str(e)) from None
        try:
            self._prompt = load_judge_prompt("absolute", self.prompt)
        except (FtscaleError, FileNotFoundError) as e:
            raise _KeyProblem("prompt", str(e)) from None
        if self.max_new_tokens is None:
            self.max_new_tokens = self._prompt.max_new_tokens
        return self


def tone_judge_messages(params: ToneJudgeParams, input_text: Any, output: str, reference: Any) -> list[dict]:
    return params._prompt.render(persona_rubric=params._rubric, query=_as_prompt_text(input_text), reply=output)


def tone_judge_scores(judgement_text: str | None, params: ToneJudgeParams, prefix: str) -> dict:
    """`<prefix>.tone`: the judge's tone score 1-10; `<prefix>.addresses_problem`: 1.0 when it says
    the reply deals with the customer's problem (helpfulness); `<prefix>.unparsable`: 1.0 when
    its reply did not follow the format (judges.parse_absolute; never guessed). A failed judge
    request scores None throughout."""
    from .judges import parse_absolute

    if judgement_text is None:
        return {f"{prefix}.tone": None, f"{prefix}.addresses_problem": None, f"{prefix}.unparsable": None}
    v = parse_absolute(judgement_text)
    return {f"{prefix}.tone": None if v["tone"] is None else float(v["tone"]),
            f"{prefix}.addresses_problem": None if v["addresses_problem"] is None else float(v["addresses_problem"]),
            f"{prefix}.unparsable": 0.0 if v["parsed"] else 1.0}


def tone_judge(output: str, reference: dict, params: ToneJudgeParams, prefix: str) -> dict:
    """Placeholders until the judge pass (as llm_judge)."""
    return tone_judge_scores(None, params, prefix)


def _tone_judge_metrics(params: ToneJudgeParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(f"{prefix}.tone", f"the judge's tone score (1-10) for persona {params.persona}"),
            Metric(f"{prefix}.addresses_problem", "the judge says the reply deals with the customer's problem (helpfulness)"),
            Metric(f"{prefix}.unparsable", "the judge's reply did not follow the format", higher_is_better=False))


register(Evaluator("tone_judge", ToneJudgeParams, _tone_judge_metrics, no_needs, tone_judge,
                   JudgeHooks(tone_judge_messages, tone_judge_scores)))


# --- probe_answer: the forgetting probes' checkable short answers (data/probes.py) ---------------

def probe_answer(output: str, reference: dict, params: NoParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the reply gives the reference answer (ftscale.data.probes.probe_correct:
    the last number for numeric answers, the answer on word boundaries for strings)."""
    from ftscale.data.probes import probe_correct

    return {prefix: probe_correct(output, reference)}


register(Evaluator("probe_answer", NoParams, one_metric("the reply gives the probe's answer"),
                   lambda p: ("answer",), probe_answer))


# --- agreement with a captured fine-tune (ftscale migrate) ---------------------------------------
# When the user has no scoring rule, the OpenAI fine-tune's own answers (captured into each eval
# example's reference as `captured`) are the reference a local replacement is held to.

class AgreementExactParams(TextMatch):
    field: str = Field("captured", description="reference field holding the fine-tune's answer")


def agreement_exact(output: str, reference: dict, params: AgreementExactParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output equals the fine-tune's answer after normalisation (NFC,
    whitespace collapsed, case folded unless case_sensitive); None when no answer was captured."""
    expected = reference.get(params.field)
    return {prefix: None if not isinstance(expected, str) else float(texts_equal(output, expected, params))}


register(Evaluator("agreement_exact", AgreementExactParams,
                   one_metric("the output equals the fine-tune's answer (normalised text)"),
                   lambda p: (p.field,), agreement_exact))


class AgreementJsonParams(TextMatch):
    field: str = Field("captured", description="reference field holding the fine-tune's answer")
    fields: list[str] | None = Field(None, description="the JSON fields compared (default: every field of the "
                                                        "fine-tune's object)")


def agreement_json(output: str, reference: dict, params: AgreementJsonParams, prefix: str) -> dict:
    """Per-field equality of the first JSON object of the output with the first JSON object of the
    fine-tune's answer. `<prefix>`: the share of compared fields equal; `<prefix>.all`: every one
    equal. None when the fine-tune's answer holds no JSON object (nothing to agree with); 0.0 when
    the output holds none. Detail `<prefix>.differ`: the fields that differ."""
    expected = reference.get(params.field)
    want = first_json_object(expected) if isinstance(expected, str) else None
    if want is None:
        return {prefix: None, f"{prefix}.all": None, f"{prefix}.differ": None}
    names = params.fields if params.fields is not None else list(want)
    names = [n for n in names if n in want]
    if not names:
        return {prefix: None, f"{prefix}.all": None, f"{prefix}.differ": None}
    got = first_json_object(output)
    differ = [n for n in names if got is None or n not in got or not values_equal(got[n], want[n], params)]
    return {prefix: 1.0 - len(differ) / len(names), f"{prefix}.all": float(not differ), f"{prefix}.differ": differ}


register(Evaluator("agreement_json", AgreementJsonParams,
                   lambda p, prefix: (Metric(prefix, "share of the fine-tune's JSON fields the output gives equal"),
                                      Metric(f"{prefix}.all", "every JSON field equals the fine-tune's")),
                   lambda p: (p.field,), agreement_json))


class AgreementJudgeParams(Strict):
    judge: ModelSpec = Field(description="hf:<model ref>, openai:<model> or openai:<model>@<base_url>")
    order: Literal["local_first", "captured_first"] = Field(
        description="which answer is shown as A; list the evaluator once per order to ask both")
    field: str = Field("captured", description="reference field holding the fine-tune's answer")
    criteria: str = Field("correct, complete, and in the form the request asks for",
                          description="what a good answer is, shown to the judge")
    prompt: Path | None = Field(None, description="a pairwise judge prompt YAML (default configs/judges/agreement.yaml)")
    max_new_tokens: int | None = Field(None, ge=1, description="the judge's reply length (default: the prompt file's)")
    _prompt: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self):
        from ftscale.errors import FtscaleError

        from .judges import JUDGES_DIR, load_judge_prompt

        try:
            self._prompt = load_judge_prompt("pairwise", self.prompt or JUDGES_DIR / "agreement.yaml")
        except (FtscaleError, FileNotFoundError) as e:
            raise _KeyProblem("prompt", str(e)) from None
        if self.max_new_tokens is None:
            self.max_new_tokens = self._prompt.max_new_tokens
        return self


def agreement_judge_messages(params: AgreementJudgeParams, input_text: Any, output: str, reference: Any) -> list[dict]:
    captured = (reference or {}).get(params.field)
    if not isinstance(captured, str):
        raise ValueError(f"agreement_judge: the reference has no {params.field!r} answer to compare with")
    a, b = (output, captured) if params.order == "local_first" else (captured, output)
    return params._prompt.render(persona_rubric=params.criteria, query=_as_prompt_text(input_text), reply_a=a, reply_b=b)


def agreement_judge_scores(judgement_text: str | None, params: AgreementJudgeParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 the local answer won, 0.5 a tie, 0.0 the fine-tune's won (its mean is a win
    score; as good = at least 0.5); `<prefix>.unparsable`: the judge's reply had no `Winner:` line.
    A failed judge request scores None throughout."""
    from .judges import parse_pairwise

    if judgement_text is None:
        return {prefix: None, f"{prefix}.unparsable": None}
    verdict = parse_pairwise(judgement_text)
    if verdict is None:
        return {prefix: None, f"{prefix}.unparsable": 1.0}
    local = "A" if params.order == "local_first" else "B"
    return {prefix: 0.5 if verdict == "tie" else float(verdict == local), f"{prefix}.unparsable": 0.0}


def agreement_judge(output: str, reference: dict, params: AgreementJudgeParams, prefix: str) -> dict:
    """Placeholders until the judge pass (as llm_judge)."""
    return agreement_judge_scores(None, params, prefix)


register(Evaluator("agreement_judge", AgreementJudgeParams,
                   lambda p, prefix: (Metric(prefix, f"the judge prefers the local answer (1), ties (0.5) or prefers "
                                                     f"the fine-tune's (0), {p.order.replace('_', ' ')}"),
                                      Metric(f"{prefix}.unparsable", "the judge's reply had no verdict",
                                             higher_is_better=False)),
                   lambda p: (p.field,), agreement_judge,
                   JudgeHooks(agreement_judge_messages, agreement_judge_scores)))


def both_orders(local_first: float | None, captured_first: float | None) -> float | None:
    """One item's agreement_judge outcome from its two orders (ftscale.eval.judges.combine): 1.0 the
    local answer is at least as good as the fine-tune's (it won, or the orders split or tied), 0.0
    the fine-tune's is better; None when either order has no verdict."""
    from .judges import combine

    def winner(v):
        return None if v is None else {1.0: "x", 0.5: "tie", 0.0: "y"}[v]

    outcome = combine(winner(local_first), winner(captured_first))
    return None if outcome == "unparsable" else float(outcome != "y")
