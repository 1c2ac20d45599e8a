"""Evaluators of JSON output: json_schema (valid under a schema), json_fields (field by field) and
reference_answer (its `answer` against the reference's)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for
from pydantic import Field, PrivateAttr, field_validator, model_validator

from ftscale import paths
from ftscale.strict import Strict

from .answers import answers_match
from .evaluator_types import Evaluator, KeyProblem, NoParams, no_needs, one_metric
from .json_output import NOT_JSON, first_json_object, whole_json
from .task_types import Metric
from .text_match import TextMatch, values_equal


# --- json_schema ---------------------------------------------------------------------------------

def _checked_schema(schema: Any, key: str):
    """A validator for the schema, or KeyProblem naming what is wrong with it."""
    if not isinstance(schema, dict):
        raise KeyProblem(key, f"a JSON schema must be an object, got {type(schema).__name__}")
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise KeyProblem(key, f"invalid JSON schema at {where}: {e.message}") from None
    return cls(schema)


class JsonSchemaParams(Strict):
    schema_: dict | None = Field(None, alias="schema", description="the JSON schema, inline")
    schema_path: str | None = Field(None, description="a JSON schema file, relative to the working directory (else a shipped one: configs/schemas/...)")
    strict: bool = Field(True, description="true: the whole output is one JSON value; false: the first JSON object in it")
    _validator: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self):
        # Loaded and checked now, so a broken schema stops the run before any generation.
        if (self.schema_ is None) == (self.schema_path is None):
            raise KeyProblem("schema", "give exactly one of schema (inline) and schema_path")
        if self.schema_ is not None:
            self._validator = _checked_schema(self.schema_, "schema")
            return self
        path = paths.shipped(self.schema_path)
        if not path.is_file():
            raise KeyProblem("schema_path", f"no such file: {path}")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise KeyProblem("schema_path", f"{path} is not JSON: {e}") from None
        self._validator = _checked_schema(schema, "schema_path")
        return self


def json_schema(output: str, reference: dict, params: JsonSchemaParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output parses as JSON (the whole output, or with strict: false the
    first JSON object in it) and is valid under the schema. Detail `<prefix>.error`: why not."""
    if params.strict:
        value = whole_json(output)  # JSON `null` is a value, and the schema decides on it
        if value is NOT_JSON:
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


JSON_SCHEMA = Evaluator("json_schema", JsonSchemaParams, one_metric("the output is JSON valid under the schema"),
                        no_needs, json_schema)


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


JSON_FIELDS = Evaluator("json_fields", JsonFieldsParams, _json_fields_metrics,
                        lambda p: tuple(p.fields) if p.reference_field is None else (p.reference_field,), json_fields)


# --- reference_answer ----------------------------------------------------------------------------

def reference_answer(output: str, reference: dict, params: NoParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the first JSON object in the output has an `answer` matching the reference's
    (eval/answers.py: numbers within 0.1% or 0.001, text up to case, spacing and a final full stop); None
    when the reference has none. The first object, wherever it is, so that knowing the answer is scored
    apart from the format (an output that is one object is its own first object)."""
    if "answer" not in reference:
        return {prefix: None}
    got = first_json_object(output)
    return {prefix: float(got is not None and "answer" in got and answers_match(got["answer"], reference))}


REFERENCE_ANSWER = Evaluator("reference_answer", NoParams, one_metric("the answer matches the reference"),
                             lambda p: ("answer",), reference_answer, needs_all=True)


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (JSON_SCHEMA, JSON_FIELDS, REFERENCE_ANSWER)
