"""Customer-service queries for the "tone" task: teach a model a persona's tone (the study's rude
agent) from replies distilled from a stronger model, and judge it double-blind.

A query is a customer's message to a shop's support desk, rendered from a *template instance*
(product, problem, mood, phrasing template) with varied details: customer name, order number,
date, amount and the wording of the problem. The train pool and the held-out eval set are split
on template instances, so no (product, problem, mood, template) combination of the eval set
occurs in training (every product, problem, mood and template on its own does). Output depends
only on the seed.

    ftscale data generate tone --seed 0 --n-train 2000 --n-eval 200 --output-dir data/tone

Each line of `queries-train.jsonl` / `queries-eval.jsonl` is one query:
`{"id", "query", "product", "problem", "mood", "template"}`. The chat files that train and
evaluate come from them: `eval_records(queries, persona)` (eval format: system + user, an `id`
and a `reference`) and `train_record(query, persona, reply)` (system + user + the teacher's reply).
"""
from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from ftscale.atomic import write_jsonl

from .personas import load_persona

# ---------------------------------------------------------------- vocabulary
# Products, each of one kind; a problem applies to some kinds only (a hoodie has no setup).
PRODUCTS = {
    "Bluetooth speaker": "device", "smartwatch": "device", "robot vacuum": "device", "coffee maker": "device",
    "air fryer": "device", "electric toothbrush": "device", "e-reader": "device", "mechanical keyboard": "device",
    "office chair": "furniture", "bookshelf": "furniture", "standing desk": "furniture",
    "cast-iron skillet": "home", "duvet cover": "home", "suitcase": "home", "knife set": "home",
    "winter coat": "apparel", "rain jacket": "apparel", "hoodie": "apparel", "wool sweater": "apparel",
    "dress shirt": "apparel", "fleece vest": "apparel",
}
ALL_KINDS = ("device", "furniture", "home", "apparel")

# problem -> (kinds it applies to, wordings). Slots: {product} {order} {date} {amount}.
PROBLEMS = {
    "never_arrived": (ALL_KINDS, [
        "My {product} (order {order}) was supposed to arrive on {date} and it still hasn't shown up.",
        "Order {order} for a {product} was due on {date}. Nothing has arrived.",
        "I'm still waiting for the {product} I ordered, order {order}. The delivery date was {date}.",
    ]),
    "damaged": (ALL_KINDS, [
        "The {product} from order {order} arrived on {date} and it's damaged.",
        "My {product} came on {date} (order {order}) with the box crushed and the {product} inside damaged.",
        "I received order {order} on {date} and the {product} was already damaged when I opened it.",
    ]),
    "wrong_item": (ALL_KINDS, [
        "I ordered a {product} (order {order}) but the package that came on {date} had something completely different in it.",
        "Order {order} was supposed to be a {product}. What arrived on {date} is not a {product}.",
        "You sent me the wrong item. I paid for a {product}, order {order}, delivered {date}.",
    ]),
    "missing_parts": (("device", "furniture"), [
        "The {product} from order {order} arrived on {date} with parts missing, so I can't use it.",
        "My {product} (order {order}, delivered {date}) is missing pieces that are listed in the box contents.",
        "Half the parts for the {product} weren't in the box. Order {order}, arrived {date}.",
    ]),
    "stopped_working": (("device",), [
        "The {product} I bought on {date} (order {order}) stopped working.",
        "My {product} won't turn on anymore. I only got it on {date}, order {order}.",
        "Order {order}: the {product} worked for a few days after {date} and now it's dead.",
    ]),
    "setup_help": (("device",), [
        "I can't figure out how to set up the {product} I got on {date} (order {order}).",
        "The {product} from order {order} arrived on {date} and I can't get it to connect or start properly.",
        "How do I get the {product} working? It came on {date}, order {order}, and the manual is useless.",
    ]),
    "warranty": (("device", "furniture", "home"), [
        "Is my {product} still under warranty? I bought it on {date}, order {order}.",
        "I want to make a warranty claim for my {product}, order {order}, purchased {date}.",
        "Does the warranty cover my {product}? Order {order}, bought on {date}, and it has a fault.",
    ]),
    "defective": (("furniture", "home", "apparel"), [
        "The {product} from order {order} is already falling apart and I only got it on {date}.",
        "My {product} (order {order}, delivered {date}) has a defect: the finish is coming apart.",
        "The quality of the {product} I received on {date} is terrible, it broke on first use. Order {order}.",
    ]),
    "wrong_size": (("apparel",), [
        "The {product} I ordered (order {order}) arrived on {date} in the wrong size.",
        "I picked a medium {product} but order {order} came on {date} as an extra large.",
        "My {product} doesn't fit; the size on the label isn't what I ordered. Order {order}, delivered {date}.",
    ]),
    "double_charged": (ALL_KINDS, [
        "I was charged twice for my {product}, order {order}: two payments of {amount} on {date}.",
        "My card shows {amount} taken two times on {date} for one {product}, order {order}.",
        "You billed me twice for order {order} ({product}), {amount} each, on {date}.",
    ]),
    "refund_missing": (ALL_KINDS, [
        "I returned the {product} (order {order}) on {date} and still haven't gotten my {amount} refund.",
        "Where is my refund of {amount}? I sent the {product} back on {date}, order {order}.",
        "The return of my {product} was confirmed on {date} but the {amount} never came back to my account. Order {order}.",
    ]),
    "return_request": (ALL_KINDS, [
        "I want to return the {product} I got on {date}, order {order}.",
        "How do I send back the {product} from order {order}? It arrived on {date} and I don't want it.",
        "I'd like a refund for the {product}, order {order}, delivered {date}. I haven't used it.",
    ]),
    "cancel_order": (ALL_KINDS, [
        "I need to cancel order {order} for the {product}. I placed it on {date}.",
        "Please cancel my {product}, order {order}, ordered {date}. I don't need it anymore.",
        "I ordered a {product} on {date} by mistake. Order {order}. Cancel it before it ships.",
    ]),
    "change_address": (ALL_KINDS, [
        "I need to change the delivery address for my {product}, order {order}, placed {date}.",
        "I moved. Order {order} (a {product}, ordered {date}) is going to my old address.",
        "Can the {product} in order {order} go to a different address? I ordered it on {date}.",
    ]),
    "tracking_stuck": (ALL_KINDS, [
        "The tracking for order {order} ({product}) hasn't updated since {date}.",
        "My {product} has said 'in transit' since {date}. Order {order}. Is it lost?",
        "Order {order}, a {product}: the tracking page has been stuck on the same status since {date}.",
    ]),
    "discount_code": (ALL_KINDS, [
        "My discount code didn't apply when I bought the {product} on {date}. I paid the full {amount}. Order {order}.",
        "I used a promo code for the {product} (order {order}, {date}) and got charged {amount} anyway.",
        "The 20% off code was accepted at checkout on {date} but order {order} for the {product} still cost {amount}.",
    ]),
}

# mood -> phrasing templates around the problem sentence ({problem}); some are signed ({name}).
MOODS = {
    "angry": [
        "This is absolutely unacceptable. {problem} I want this fixed today, not next week.",
        "{problem} Worst service I've ever had. Sort it out. {name}",
        "I am FURIOUS. {problem} Do your job and fix this.",
        "Are you kidding me? {problem} I've been a customer for years and this is how you treat me?",
    ],
    "frustrated": [
        "Hi. This is the third time I'm writing about this. {problem} Can someone please actually help?",
        "{problem} I've already spent an hour on this and I'm getting really tired of it. {name}",
        "Honestly, I'm pretty fed up. {problem} What are my options?",
        "Ugh. {problem} I just want this resolved.",
    ],
    "polite": [
        "Hello, I hope you're having a good day. {problem} Could you please help me with this? Many thanks, {name}",
        "Hi there. {problem} I'd appreciate any help you can give. Kind regards, {name}",
        "Good morning! {problem} Thank you in advance for looking into it.",
        "Dear support team,\n\n{problem} Please let me know what I should do.\n\nBest,\n{name}",
    ],
    "confused": [
        "Hi, I'm a bit lost here. {problem} I'm not sure what I'm supposed to do next?",
        "{problem} Is that normal? I don't really understand what's going on.",
        "Sorry if this is a silly question. {problem} Who do I talk to about this?",
        "Hello? {problem} I tried reading the help page but it didn't make sense to me. {name}",
    ],
    "anxious": [
        "Hi, I'm really worried. {problem} It's a gift and I need it soon. Please help!",
        "{problem} I'm starting to panic a bit because I can't afford to lose that money. {name}",
        "Sorry to bother you, I'm quite stressed about this. {problem} Is there anything you can do?",
        "Please, I need help. {problem} Will this get sorted out in time?",
    ],
    "impatient": [
        "Quick one: {problem} Need an answer ASAP.",
        "{problem} What's the fix? Keep it short, I'm busy.",
        "No time for back-and-forth. {problem} Just tell me what happens next.",
        "{problem} Reply today please. {name}",
    ],
}

FIRST_NAMES = ["Ana", "Ben", "Chen", "Dana", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
               "Marco", "Nadia", "Oscar", "Priya", "Rafael", "Sara", "Tomas", "Yuki", "Amir", "Bea", "Carlos",
               "Deepa", "Erik", "Fatima", "George", "Hana", "Ivan", "Julia"]
LAST_NAMES = ["Lima", "Carter", "Wei", "Novak", "Kaya", "Adeyemi", "Berg", "Martin", "Costa", "Weber", "Mensah",
              "Fischer", "Rossi", "Haddad", "Lund", "Nair", "Gomez", "Cohen", "Horak", "Sato"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def template_ids() -> dict[str, list[str]]:
    """mood -> its phrasing templates' ids (`angry-0`, ...)."""
    return {mood: [f"{mood}-{i}" for i in range(len(ts))] for mood, ts in MOODS.items()}


def template_instances() -> list[tuple[str, str, str, str]]:
    """Every (product, problem, mood, template id) combination, in a fixed order."""
    out = []
    for product, kind in PRODUCTS.items():
        for problem, (kinds, _) in PROBLEMS.items():
            if kind not in kinds:
                continue
            for mood, tids in template_ids().items():
                out.extend((product, problem, mood, tid) for tid in tids)
    return out


# ---------------------------------------------------------------- details
def _name(rng: random.Random) -> str:
    first = rng.choice(FIRST_NAMES)
    return f"{first} {rng.choice(LAST_NAMES)}" if rng.random() < 0.5 else first


# Every order-number format _order draws, for code that reads a query's order number back.
ORDER_PATTERN = r"#\d{7}|ORD-\d{5}|[A-Z]{2}-\d{6}|\d{4}-\d{4}"


def _order(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"#{rng.randint(1000000, 9999999)}"
    if kind == 1:
        return f"ORD-{rng.randint(10000, 99999)}"
    if kind == 2:
        return f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}-{rng.randint(100000, 999999)}"
    return f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def _date(rng: random.Random) -> str:
    day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))
    month = MONTHS[day.month - 1]
    return rng.choice([f"{month} {day.day}", f"{day.day} {month}", day.isoformat(), f"{month[:3]} {day.day}"])


def _amount(rng: random.Random) -> str:
    return f"${rng.randint(9, 499)}.{rng.choice([0, 49, 95, 99, rng.randint(0, 99)]):02d}"


def render(instance: tuple[str, str, str, str], rng: random.Random) -> str:
    """One query text for a template instance, with freshly drawn details."""
    product, problem, mood, tid = instance
    wording = rng.choice(PROBLEMS[problem][1])
    text = wording.format(product=product, order=_order(rng), date=_date(rng), amount=_amount(rng))
    template = MOODS[mood][int(tid.rsplit("-", 1)[1])]
    return template.format(problem=text, name=_name(rng)).strip()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- dataset
MAX_TRIES = 50  # redraws of one instance's details before giving up on a distinct text


def _ordered_instances(rng: random.Random) -> list[tuple]:
    """All instances, shuffled within each (mood, problem) group and interleaved across groups,
    so every prefix (the eval set, the train pool's first round) is balanced over moods and problems."""
    groups: dict[tuple, list] = {}
    for inst in template_instances():
        groups.setdefault((inst[2], inst[1]), []).append(inst)
    problems, moods = sorted({p for _, p in groups}), sorted({m for m, _ in groups})
    rng.shuffle(problems)
    rng.shuffle(moods)
    keys = [(m, p) for p in problems for m in moods if (m, p) in groups]  # each run of keys covers every mood
    for k in keys:
        rng.shuffle(groups[k])
    longest = max(len(g) for g in groups.values())
    return [groups[k][i] for i in range(longest) for k in keys if i < len(groups[k])]


def generate(seed: int = 0, n_train: int = 2000, n_eval: int = 200) -> tuple[list[dict], list[dict]]:
    """(train_queries, eval_queries): distinct texts; the eval set's template instances never occur in train.

    The eval set holds one query per instance (n_eval instances). The train pool renders each of the
    remaining instances once, and cycles through them again with new details if n_train asks for more.
    """
    if n_train < 0 or n_eval < 0:
        raise ValueError("n_train and n_eval must be non-negative")
    rng = random.Random(seed)
    instances = _ordered_instances(rng)
    if n_eval >= len(instances):
        raise ValueError(f"n_eval={n_eval} leaves no template instance for training (there are {len(instances)})")
    eval_inst, train_inst = instances[:n_eval], instances[n_eval:]
    seen: set[str] = set()

    def draw(inst):
        for _ in range(MAX_TRIES):
            text = render(inst, rng)
            if _norm(text) not in seen:
                seen.add(_norm(text))
                return text
        raise ValueError(f"no new distinct text for {inst} after {MAX_TRIES} tries; ask for fewer queries")

    eval_items = [(inst, draw(inst)) for inst in eval_inst]
    train_items = [(inst, draw(inst)) for inst in (train_inst[i % len(train_inst)] for i in range(n_train))]
    rng.shuffle(eval_items)
    rng.shuffle(train_items)

    def record(split, i, inst, text):
        product, problem, mood, tid = inst
        return {"id": f"tone-{split}-{i:05d}", "query": text, "product": product, "problem": problem,
                "mood": mood, "template": tid}

    train = [record("train", i, inst, text) for i, (inst, text) in enumerate(train_items)]
    evals = [record("eval", i, inst, text) for i, (inst, text) in enumerate(eval_items)]
    return train, evals


def write(out_dir: Path, seed: int = 0, n_train: int = 2000, n_eval: int = 200, persona="rude") -> dict:
    """Write `queries-train.jsonl` and `queries-eval.jsonl` (one query dict per line) and the eval set
    in chat form for `persona` (`eval-<persona>.jsonl`: the tone task's eval file), atomically."""
    out_dir = Path(out_dir)
    train, evals = generate(seed, n_train, n_eval)
    chat = eval_records(evals, persona)
    paths = {"train": write_jsonl(out_dir / "queries-train.jsonl", train),
             "eval": write_jsonl(out_dir / "queries-eval.jsonl", evals),
             "eval_chat": write_jsonl(out_dir / f"eval-{chat[0]['reference']['persona']}.jsonl", chat)}
    return {**paths, "n_train": len(train), "n_eval": len(evals)}


# ---------------------------------------------------------------- chat records
def _persona(persona):
    if isinstance(persona, (str, Path)):
        return load_persona(persona)
    return persona


def eval_records(queries: list[dict], persona) -> list[dict]:
    """Chat eval records: the persona's short system prompt, the customer's message, an id and a
    reference for the judges. `persona`: a Persona, or a persona name / YAML path."""
    persona = _persona(persona)
    return [{"id": q["id"],
             "messages": [{"role": "system", "content": persona.system_prompt},
                          {"role": "user", "content": q["query"]}],
             "reference": {"query": q["query"], "product": q["product"], "problem": q["problem"],
                           "mood": q["mood"], "persona": persona.name}}
            for q in queries]


def train_record(query: dict, persona, reply: str) -> dict:
    """One training example (OpenAI chat fine-tuning format): system, user, the assistant's reply."""
    persona = _persona(persona)
    if not isinstance(reply, str) or not reply.strip():
        raise ValueError(f"{query.get('id', '?')}: the reply is empty")
    return {"messages": [{"role": "system", "content": persona.system_prompt},
                         {"role": "user", "content": query["query"]},
                         {"role": "assistant", "content": reply.strip()}]}
