"""Tests for the formatting task generator (ftscale.data.formatting)."""
import datetime as dt
import json
import os
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import jsonschema
import pycountry
import pytest

from ftscale.data import formatting

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "configs" / "schemas" / "formatting.schema.json"


@pytest.fixture(scope="module")
def data():
    return formatting.generate()  # defaults: seed 0, 1200 train, 200 eval


def user_text(rec):
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def eval_refs(data, family):
    return [(user_text(r), r["reference"]) for r in data[1] if r["reference"]["family"] == family]


def test_determinism():
    a = formatting.generate(seed=3, n_train=300, n_eval=50)
    assert a == formatting.generate(seed=3, n_train=300, n_eval=50)
    assert json.dumps(a) != json.dumps(formatting.generate(seed=4, n_train=300, n_eval=50))


def test_sizes_and_record_shapes(data):
    train, evals = data
    assert len(train) >= 1000 and len(evals) >= 200
    for r in train:
        assert list(r) == ["messages"]
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == formatting.SYSTEM_PROMPT
        assert all(set(m) == {"role", "content"} for m in r["messages"])
    for r in evals:
        assert set(r) == {"id", "messages", "reference"}
        assert [m["role"] for m in r["messages"]] == ["system", "user"]
        assert re.fullmatch(r"fmt-[a-z]+-\d{5}", r["id"])
        assert r["id"].split("-")[1] == r["reference"]["family"]


def test_no_overlap_between_splits(data):
    norm = lambda s: " ".join(s.lower().split())
    train_q = {norm(user_text(r)) for r in data[0]}
    eval_q = {norm(user_text(r)) for r in data[1]}
    assert len(train_q) == len(data[0]) and len(eval_q) == len(data[1])  # no duplicates inside a split either
    assert not train_q & eval_q


def test_every_family_in_both_splits(data):
    # Train records carry no family, so recover it from the generator's internal items.
    train_items, eval_items = formatting._build(0, 1200, 200)
    assert [q for _, q, _, _ in train_items] == [user_text(r) for r in data[0]]
    for items, n in ((train_items, 1200), (eval_items, 200)):
        counts = {f: sum(it[0] == f for it in items) for f in formatting.FAMILIES}
        assert len(counts) >= 5
        assert all(abs(c - n / len(counts)) <= 1 for c in counts.values()), counts


def test_train_targets_validate_against_schema(data):
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for r in data[0]:
        content = r["messages"][-1]["content"]
        obj = json.loads(content)
        validator.validate(obj)
        assert list(obj) == ["answer", "explanation"]
        assert not isinstance(obj["answer"], bool)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"answer": 1, "explanation": "x", "extra": 0})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"answer": 1, "explanation": ""})


def test_eval_ids_unique_and_references_roundtrip(data):
    ids = [r["id"] for r in data[1]]
    assert len(set(ids)) == len(ids)
    for r in data[1]:
        ref = r["reference"]
        back = json.loads(formatting.target(ref["answer"], ref["explanation"]))
        assert back == {"answer": ref["answer"], "explanation": ref["explanation"]}
        assert type(back["answer"]) is type(ref["answer"])
        assert ref["type"] == ("string" if isinstance(ref["answer"], str) else "number")


def test_target_key_order_and_unicode():
    assert formatting.target("Türkiye", "ok.") == '{"answer": "Türkiye", "explanation": "ok."}'


def test_weekday_and_date_offsets(data):
    checked = 0
    for split_items in formatting._build(0, 1200, 200):
        for fam, q, a, _ in split_items:
            if fam != "dates":
                continue
            day = dt.date.fromisoformat(re.search(r"\d{4}-\d{2}-\d{2}", q).group())
            if "day of the week" in q:
                assert a == day.strftime("%A") == formatting.WEEKDAYS[day.weekday()]
            else:
                n, direction = re.search(r"(\d+) days (after|before)", q).groups()
                delta = dt.timedelta(days=int(n)) * (1 if direction == "after" else -1)
                assert a == (day + delta).isoformat()
            checked += 1
    assert checked > 100


def test_countries_recomputed_with_pycountry(data):
    checked = 0
    for q, ref in eval_refs(data, "countries"):
        a = ref["answer"]
        if re.search(r"alpha-[23] code (of|for)", q):  # name -> code
            c = pycountry.countries.get(**{"alpha_2" if len(a) == 2 else "alpha_3": a})
            assert q.endswith((c.name + "?", c.name + "."))
        elif "ISO 4217" in q:  # currency code -> name
            assert pycountry.currencies.get(alpha_3=re.search(r"code ([A-Z]{3})\b", q).group(1)).name == a
        else:  # alpha-2 code -> country name
            assert pycountry.countries.get(alpha_2=re.search(r"code (?:is )?([A-Z]{2})\b", q).group(1)).name == a
        assert not any(ch in str(a) for ch in ",()")
        checked += 1
    assert checked >= 30


def test_arithmetic_explanations_compute(data):
    for q, ref in eval_refs(data, "arithmetic"):
        lhs, rhs = ref["explanation"].rstrip(".").split(" = ")
        assert re.fullmatch(r"[\d\s+\-×÷]+", lhs)
        assert eval(lhs.replace("×", "*").replace("÷", "//")) == int(rhs) == ref["answer"]
        assert isinstance(ref["answer"], int)


def test_units_recomputed(data):
    for q, ref in eval_refs(data, "units"):
        m = re.fullmatch(r"([\d.]+) \S+ ([×÷]) ([\d.]+) ([=≈]) ([\d.]+) \S+\.", ref["explanation"])
        assert m, ref["explanation"]
        v, op, f, rel, shown = m.groups()
        exact = Decimal(v) * Decimal(f) if op == "×" else Decimal(v) / Decimal(f)
        rounded = exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        assert Decimal(str(ref["answer"])) == rounded and shown == str(ref["answer"])
        assert (rel == "=") == (rounded == exact)
        if rounded == rounded.to_integral_value():
            assert isinstance(ref["answer"], int)


def test_strings_recomputed(data):
    for q, ref in eval_refs(data, "strings"):
        word = re.findall(r'"([a-z]+)"', q)[-1]
        a = ref["answer"]
        assert word in formatting.WORDS
        assert a in (word[::-1], word.upper(), len(word), word[0], word[-1], "".join(sorted(word))) or \
            (isinstance(a, int) and a == word.count(re.search(r'letter "([a-z])"', q).group(1)))


def test_too_many_requested_raises(monkeypatch):
    monkeypatch.setattr(formatting, "MAX_MISSES", 5)
    monkeypatch.setattr(formatting, "FAMILIES", {"strings": lambda rng: ("same?", 1, "1.")})
    with pytest.raises(ValueError, match="only 1 distinct"):
        formatting.generate(n_train=5, n_eval=2)


def test_write_is_atomic_and_parses(tmp_path, monkeypatch):
    out = tmp_path / "fmt"
    out.mkdir()
    (out / "train.jsonl").write_text("stale\n")
    old_inode = os.stat(out / "train.jsonl").st_ino
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (replaced.append((Path(s), Path(d))), real_replace(s, d)))

    res = formatting.write(out, seed=0, n_train=100, n_eval=20)

    assert res["n_train"] == 100 and res["n_eval"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "train.jsonl"]  # no leftover temp files
    assert {d.name for _, d in replaced} == {"train.jsonl", "eval.jsonl"}
    assert all(s.parent == d.parent == out and s != d for s, d in replaced)  # temp file in the same dir
    assert os.stat(out / "train.jsonl").st_ino != old_inode  # renamed over, not rewritten in place
    train, evals = formatting.generate(0, 100, 20)
    for key, records in (("train", train), ("eval", evals)):
        raw = Path(res[key]).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        lines = raw.decode("utf-8").splitlines()
        assert [json.loads(line) for line in lines] == records


def test_shipped_files_are_what_the_generator_writes():
    """data/formatting/*.jsonl are the generator's output for seed 0 (README: `ftscale data generate`)."""
    root = Path(__file__).resolve().parents[1] / "data" / "formatting"
    train, evals = formatting.generate(seed=0, n_train=1200, n_eval=200)
    for name, records in (("train.jsonl", train), ("eval.jsonl", evals)):
        shipped = [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines()]
        assert shipped == records, name
