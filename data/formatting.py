"""Deterministic generator for the "formatting" task.

Every question has an exactly checkable answer; the model must reply with a
JSON object ``{"answer": ..., "explanation": ...}``. Output depends only on the
seed (and the installed pycountry data, so pin its version for byte-identical
files across machines).

    ftscale data generate formatting --seed 0 --n-train 1200 --n-eval 200 --output-dir data/formatting
"""
from __future__ import annotations

import datetime as dt
import json
import random
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from pathlib import Path

import pycountry

from ftscale.atomic import write_jsonl

SYSTEM_PROMPT = ('Answer with only a JSON object of the form {"answer": <number or string>, '
                 '"explanation": "<one short sentence>"} and nothing else.')

NAMES = ["Alice", "Ben", "Chloe", "Daniel", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal",
         "Kara", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq",
         "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "cards", "stamps",
         "coins", "shells", "oranges", "balloons", "crayons", "buttons", "beads", "eggs",
         "candles", "notebooks", "tickets", "plums"]
WORDS = """apple banana cherry garden planet river mountain window pencil rocket silver orange
purple yellow forest island bridge castle dragon candle butter coffee summer winter spring
autumn ocean desert valley meadow thunder shadow mirror ladder basket button carpet dinner
engine feather guitar hammer jacket kitten lemon magnet napkin needle parrot pepper pillow
pocket puzzle rabbit saddle ticket tomato turtle violin walnut zebra anchor balloon cactus
dolphin eclipse falcon glacier harbor igloo jungle kettle lantern marble nectar orchid
pirate quartz raccoon sapphire tunnel umbrella velvet whistle yogurt zipper banana
cabbage diamond elephant flamingo giraffe horizon journal kingdom library mustard notebook
octopus penguin pumpkin rainbow sandwich teacher unicorn village wizard blanket chimney
compass cricket cupcake gravel hollow insect jigsaw lobster mitten muffin noodle pebble
pretzel pyramid rhythm scissors spinach squirrel sunset tiger trumpet walrus""".split()
WORDS = sorted(set(WORDS))  # de-duplicated and ordered so the list itself is stable

# Unit tables: symbol -> (singular, plural, size in the dimension's base unit), exact Decimals.
UNITS = {
    "length": {"mm": ("millimetre", "millimetres", "0.001"), "cm": ("centimetre", "centimetres", "0.01"),
               "m": ("metre", "metres", "1"), "km": ("kilometre", "kilometres", "1000"),
               "in": ("inch", "inches", "0.0254"), "ft": ("foot", "feet", "0.3048"),
               "yd": ("yard", "yards", "0.9144"), "mi": ("mile", "miles", "1609.344")},
    "mass": {"mg": ("milligram", "milligrams", "0.001"), "g": ("gram", "grams", "1"),
             "kg": ("kilogram", "kilograms", "1000"), "t": ("tonne", "tonnes", "1000000"),
             "lb": ("pound", "pounds", "453.59237"), "oz": ("ounce", "ounces", "28.349523125")},
    "volume": {"mL": ("millilitre", "millilitres", "1"), "cL": ("centilitre", "centilitres", "10"),
               "dL": ("decilitre", "decilitres", "100"), "L": ("litre", "litres", "1000"),
               "gal": ("US gallon", "US gallons", "3785.411784")},
    "time": {"ms": ("millisecond", "milliseconds", "0.001"), "s": ("second", "seconds", "1"),
             "min": ("minute", "minutes", "60"), "h": ("hour", "hours", "3600"),
             "d": ("day", "days", "86400"), "wk": ("week", "weeks", "604800")},
    "data": {"bit": ("bit", "bits", "0.125"), "B": ("byte", "bytes", "1"),
             "kB": ("kilobyte", "kilobytes", "1000"), "MB": ("megabyte", "megabytes", "1000000"),
             "GB": ("gigabyte", "gigabytes", "1000000000"), "KiB": ("kibibyte", "kibibytes", "1024"),
             "MiB": ("mebibyte", "mebibytes", "1048576")},
}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _unambiguous(name: str) -> bool:
    return not any(ch in name for ch in ",()")


# Sorted by code so the pools do not depend on pycountry's internal ordering.
COUNTRIES = sorted((c for c in pycountry.countries if _unambiguous(c.name)), key=lambda c: c.alpha_2)
# XTS/XXX are placeholder codes, not currencies.
CURRENCIES = sorted((c for c in pycountry.currencies if _unambiguous(c.name) and c.alpha_3 not in {"XTS", "XXX"}),
                    key=lambda c: c.alpha_3)


# ---------------------------------------------------------------- families
def arithmetic(rng: random.Random):
    a, b = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        x, y = rng.randint(2, 99), rng.randint(2, 99)
        q = rng.choice([f"{a} has {x} {item}. {b} gives {a} {y} more. How many {item} does {a} have now?",
                        f"{a} collected {x} {item} on Monday and {y} on Tuesday. How many {item} did {a} collect in total?"])
        return q, x + y, f"{x} + {y} = {x + y}."
    if kind == 1:
        x = rng.randint(10, 99)
        y = rng.randint(1, x - 1)
        q = rng.choice([f"{a} had {x} {item} and gave {y} of them to {b}. How many {item} does {a} have left?",
                        f"There were {x} {item} in a box, and {a} took out {y}. How many {item} are still in the box?"])
        return q, x - y, f"{x} - {y} = {x - y}."
    if kind == 2:
        x, y = rng.randint(2, 12), rng.randint(2, 25)
        q = rng.choice([f"{a} buys {x} packs of {item} with {y} {item} in each pack. How many {item} is that in total?",
                        f"Each of {x} shelves holds {y} {item}. How many {item} are on the shelves altogether?"])
        return q, x * y, f"{x} × {y} = {x * y}."
    if kind == 3:
        x, y, z = rng.randint(1, 50), rng.randint(2, 9), rng.randint(2, 12)
        q = f"{a} has {x} {item} and then buys {y} bags with {z} {item} in each bag. How many {item} does {a} have now?"
        return q, x + y * z, f"{x} + {y} × {z} = {x + y * z}."
    if kind == 4:
        y, z = rng.randint(2, 9), rng.randint(3, 12)
        w = rng.randint(1, y * z - 1)
        q = f"{a} buys {y} boxes of {z} {item} and gives {w} {item} to {b}. How many {item} does {a} keep?"
        return q, y * z - w, f"{y} × {z} - {w} = {y * z - w}."
    each, k = rng.randint(2, 20), rng.randint(2, 9)
    q = f"{a} shares {each * k} {item} equally among {k} friends. How many {item} does each friend get?"
    return q, each, f"{each * k} ÷ {k} = {each}."


def _num(d: Decimal):
    """Decimal -> int when whole, else float rounded to at most 4 decimals (half-up, exact)."""
    r = d.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return int(r) if r == r.to_integral_value() else float(r)


def _nice(d: Decimal) -> bool:
    """True when d is a short terminating decimal, i.e. fine to show in an explanation."""
    return d == d.quantize(Decimal("1e-10"))


def _fmt(d: Decimal) -> str:
    return format(d.normalize(), "f")


def units(rng: random.Random):
    with localcontext(Context(prec=28)):  # independent of any caller's decimal settings
        return _units(rng)


def _units(rng: random.Random):
    while True:  # redraw until the rounded answer keeps its precision (no 0.0000-style answers)
        table = UNITS[rng.choice(sorted(UNITS))]
        src, dst = rng.sample(sorted(table), 2)
        value = Decimal(rng.randint(1, 999)) if rng.random() < 0.7 else Decimal(rng.randint(1, 999)) / 10
        f_src, f_dst = Decimal(table[src][2]), Decimal(table[dst][2])
        exact = value * f_src / f_dst
        answer = _num(exact)
        if Decimal("0.01") <= exact <= Decimal("1e9") and abs(Decimal(str(answer)) - exact) <= exact * Decimal("1e-3"):
            break
    ratio, inverse = f_src / f_dst, f_dst / f_src
    # Show whichever of "× r" / "÷ r" uses a short exact factor, preferring factors >= 1.
    if _nice(ratio) and (ratio >= 1 or not _nice(inverse)):
        op, factor = "×", ratio
    else:
        op, factor = "÷", inverse
    rel = "=" if Decimal(str(answer)) == exact else "≈"
    v = _fmt(value)
    src_name = table[src][0] if value == 1 else table[src][1]
    dst_name = table[dst][1]
    q = rng.choice([f"Convert {v} {src_name} to {dst_name}.",
                    f"How many {dst_name} are there in {v} {src_name}?",
                    f"What is {v} {src_name} expressed in {dst_name}?"])
    q += " Round to at most 4 decimal places." if rel == "≈" else ""
    return q, answer, f"{v} {src} {op} {_fmt(factor)} {rel} {answer} {dst}."


def dates(rng: random.Random):
    day = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 100))
    iso = day.isoformat()
    if rng.random() < 0.4:
        q = rng.choice([f"What day of the week is {iso}? Give the full English weekday name.",
                        f"On which day of the week does the date {iso} fall?"])
        name = WEEKDAYS[day.weekday()]
        return q, name, f"{iso} falls on a {name}."
    n = rng.randint(1, 400)
    sign = rng.choice([1, -1])
    res = (day + dt.timedelta(days=sign * n)).isoformat()
    word, verb = ("after", "plus") if sign > 0 else ("before", "minus")
    q = rng.choice([f"What date is {n} days {word} {iso}? Answer in YYYY-MM-DD format.",
                    f"Which date comes {n} days {word} {iso}? Use the form YYYY-MM-DD."])
    return q, res, f"{iso} {verb} {n} days is {res}."


def strings(rng: random.Random):
    w = rng.choice(WORDS)
    spelled = "-".join(w)
    kind = rng.randrange(7)
    if kind == 0:
        r = w[::-1]
        q = rng.choice([f'Write the word "{w}" backwards.', f'What is "{w}" spelled in reverse order?'])
        return q, r, f"Reading {spelled} from the end gives {r}."
    if kind == 1:
        ch = rng.choice(w) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        q = rng.choice([f'How many times does the letter "{ch}" appear in "{w}"?',
                        f'Count the occurrences of the letter "{ch}" in the word "{w}".'])
        return q, w.count(ch), f"{spelled} contains {ch} {w.count(ch)} time{'s' * (w.count(ch) != 1)}."
    if kind == 2:
        q = rng.choice([f'Write the word "{w}" in all capital letters.', f'What is "{w}" in uppercase?'])
        return q, w.upper(), f"Capitalising each letter of {w} gives {w.upper()}."
    if kind == 3:
        q = rng.choice([f'How many characters are in the word "{w}"?', f'What is the length of the string "{w}"?'])
        return q, len(w), f"{spelled} has {len(w)} characters."
    if kind in (4, 5):
        which, ch = ("first", w[0]) if kind == 4 else ("last", w[-1])
        q = rng.choice([f'What is the {which} letter of the word "{w}"?', f'Which letter does "{w}" {"start" if kind == 4 else "end"} with?'])
        return q, ch, f"The {which} letter of {spelled} is {ch}."
    s = "".join(sorted(w))
    q = rng.choice([f'Sort the letters of "{w}" in alphabetical order.', f'Rearrange the letters of the word "{w}" alphabetically.'])
    return q, s, f"Sorting {', '.join(w)} alphabetically gives {s}."


def countries(rng: random.Random):
    kind = rng.randrange(4)
    if kind == 3:
        c = rng.choice(CURRENCIES)
        q = rng.choice([f"What is the name of the currency with the ISO 4217 code {c.alpha_3}?",
                        f"Which currency does the ISO 4217 code {c.alpha_3} stand for?"])
        return q, c.name, f"ISO 4217 assigns the code {c.alpha_3} to the {c.name}."
    c = rng.choice(COUNTRIES)
    if kind == 2:
        q = rng.choice([f"Which country has the ISO 3166-1 alpha-2 code {c.alpha_2}?",
                        f"Name the country whose two-letter ISO 3166-1 code is {c.alpha_2}."])
        return q, c.name, f"The ISO 3166-1 alpha-2 code {c.alpha_2} belongs to {c.name}."
    n, code = ("alpha-2", c.alpha_2) if kind == 0 else ("alpha-3", c.alpha_3)
    q = rng.choice([f"What is the ISO 3166-1 {n} code of {c.name}?",
                    f"Give the {'two' if kind == 0 else 'three'}-letter ISO 3166-1 {n} code for the country {c.name}."])
    return q, code, f"The ISO 3166-1 {n} code for {c.name} is {code}."


FAMILIES = {"arithmetic": arithmetic, "units": units, "dates": dates, "strings": strings, "countries": countries}
MAX_MISSES = 2000  # consecutive duplicate draws before a family counts as exhausted


# ---------------------------------------------------------------- dataset
def target(answer, explanation) -> str:
    return json.dumps({"answer": answer, "explanation": explanation}, ensure_ascii=False)


def _norm(q: str) -> str:
    return " ".join(q.lower().split())


def draw_distinct(rng: random.Random, need: int) -> list[tuple]:
    """Up to `need` distinct (family, question, answer, explanation) items, round-robin over the
    families (each turn adds one new question per family, so any prefix stays balanced); a family
    that draws only duplicates MAX_MISSES times in a row is exhausted. Fewer come back if all are."""
    items, seen, active = [], set(), list(FAMILIES)
    while len(items) < need and active:
        for fam in list(active):
            if len(items) >= need:
                break
            for _ in range(MAX_MISSES):
                q, a, e = FAMILIES[fam](rng)
                # Also key on the fact (answer + working) so a paraphrase cannot leak across splits.
                keys = (_norm(q), (fam, a, e))
                if not any(k in seen for k in keys):
                    seen.update(keys)
                    items.append((fam, q, a, e))
                    break
            else:
                active.remove(fam)
    return items


def _build(seed: int, n_train: int, n_eval: int):
    """Return (train_items, eval_items); items are (family, question, answer, explanation)."""
    rng = random.Random(seed)
    need = n_train + n_eval
    drawn = draw_distinct(rng, need)
    if len(drawn) < need:
        raise ValueError(f"only {len(drawn)} distinct questions found, need {need} (n_train={n_train} + n_eval={n_eval})")
    pools = {f: [item for item in drawn if item[0] == f] for f in FAMILIES}
    # Stratified shuffle: shuffle inside each family, then interleave so both splits stay balanced.
    for fam in FAMILIES:
        rng.shuffle(pools[fam])
    ordered = [p[i] for i in range(max(map(len, pools.values()))) for p in pools.values() if i < len(p)]
    eval_items, train_items = ordered[:n_eval], ordered[n_eval:need]
    rng.shuffle(eval_items)
    rng.shuffle(train_items)
    return train_items, eval_items


def generate(seed: int = 0, n_train: int = 1200, n_eval: int = 200) -> tuple[list[dict], list[dict]]:
    train_items, eval_items = _build(seed, n_train, n_eval)
    system = {"role": "system", "content": SYSTEM_PROMPT}
    train = [{"messages": [system, {"role": "user", "content": q},
                           {"role": "assistant", "content": target(a, e)}]}
             for _, q, a, e in train_items]
    evals = [{"id": f"fmt-{fam}-{i:05d}",
              "messages": [system, {"role": "user", "content": q}],
              "reference": {"answer": a, "explanation": e, "family": fam,
                            "type": "string" if isinstance(a, str) else "number"}}
             for i, (fam, q, a, e) in enumerate(eval_items)]
    return train, evals


def write(out_dir: Path, seed: int = 0, n_train: int = 1200, n_eval: int = 200) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, evals = generate(seed, n_train, n_eval)
    paths = {"train": out_dir / "train.jsonl", "eval": out_dir / "eval.jsonl"}
    write_jsonl(paths["train"], train)
    write_jsonl(paths["eval"], evals)
    return {"train": paths["train"], "eval": paths["eval"], "n_train": len(train), "n_eval": len(evals)}
