"""Synthetic data for the worked example of a user-defined task (docs/own-task.md): free-text
orders, as customers write them, turned into a JSON object.

    ftscale data generate orders --seed 0 --output-dir my-task/data

Each order is a (customer, item, quantity, city, express) tuple written out in one of many
phrasings. The train pool and the eval set share no tuple and no text, so nothing leaks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ftscale.atomic import write_jsonl

SYSTEM_PROMPT = ('Extract the order as a JSON object with the keys "customer" (string), "item" (string), '
                 '"quantity" (integer), "city" (string) and "express" (true or false). Reply with the JSON only.')

CUSTOMERS = ["Ana Lima", "Ben Carter", "Chen Wei", "Dana Novak", "Elif Kaya", "Femi Adeyemi", "Greta Berg",
             "Hugo Martin", "Ines Costa", "Jonas Weber", "Kofi Mensah", "Lena Fischer", "Marco Rossi",
             "Nadia Haddad", "Oscar Lund", "Priya Nair", "Rafael Gomez", "Sara Cohen", "Tomas Horak",
             "Yuki Sato"]
ITEMS = ["desk lamp", "office chair", "water bottle", "laptop stand", "coffee grinder", "yoga mat",
         "phone charger", "backpack", "notebook", "wireless mouse", "kettle", "bike helmet", "umbrella",
         "headphones", "plant pot", "monitor arm", "toolbox", "rain jacket", "tea set", "desk fan"]
CITIES = ["Lisbon", "Berlin", "Nairobi", "Osaka", "Toronto", "Lyon", "Krakow", "Austin", "Bergen", "Porto",
          "Accra", "Seville"]
PHRASINGS = [
    "Hi, this is {customer}. Please send {quantity} x {item} to {city}.{express}",
    "{customer} here - I'd like {quantity} {item} delivered to {city}.{express}",
    "Order for {customer}: {item}, quantity {quantity}, ship to {city}.{express}",
    "Could you ship {quantity} of the {item} to me in {city}? Thanks, {customer}.{express}",
    "Please deliver {quantity} {item} to {city} for {customer}.{express}",
    "New order! Name: {customer}. Item: {item}. Qty: {quantity}. Destination: {city}.{express}",
    "hey, {customer} again, can i get {quantity} {item}? address is in {city}.{express}",
    "I need {quantity} {item} in {city} - {customer}.{express}",
]
EXPRESS = {True: [" Express shipping please!", " I need it fast, express delivery.", " Use express."],
           False: ["", " Standard shipping is fine.", " No rush."]}


def _order(rng: random.Random) -> dict:
    return {"customer": rng.choice(CUSTOMERS), "item": rng.choice(ITEMS), "quantity": rng.randint(1, 12),
            "city": rng.choice(CITIES), "express": rng.random() < 0.4}


def _text(order: dict, rng: random.Random) -> str:
    words = {k: v for k, v in order.items() if k != "express"}
    return rng.choice(PHRASINGS).format(**words, express=rng.choice(EXPRESS[order["express"]]))


def generate(seed: int = 0, n_train: int = 600, n_eval: int = 100) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[tuple] = set()
    orders: list[tuple[dict, str]] = []
    while len(orders) < n_train + n_eval:
        order = _order(rng)
        key = tuple(order.values())
        if key in seen:  # each order once, so the eval set holds none of the training orders
            continue
        seen.add(key)
        orders.append((order, _text(order, rng)))
    train = [{"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                           {"role": "assistant", "content": json.dumps(order)}]} for order, text in orders[:n_train]]
    evals = [{"id": f"order-{i:04d}", "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                    {"role": "user", "content": text}],
              "reference": {"fields": order, "express": "express" if order["express"] else "standard"}}
             for i, (order, text) in enumerate(orders[n_train:])]
    return train, evals


def write(out_dir: Path, seed: int = 0, n_train: int = 600, n_eval: int = 100) -> dict:
    out_dir = Path(out_dir)
    train, evals = generate(seed, n_train, n_eval)
    paths = {"train": write_jsonl(out_dir / "train.jsonl", train), "eval": write_jsonl(out_dir / "eval.jsonl", evals)}
    return {"train": paths["train"], "eval": paths["eval"], "n_train": len(train), "n_eval": len(evals)}
