"""The scripted persona teacher: an OFFLINE STAND-IN for a strong teacher model, not the study's teacher.

The study distilled its rude agent's replies from gpt-4. Offline, the only model at hand is the
135M embedded one, whose replies teach no tone at all. But ftscale generated the customer queries
itself (data/tone.py), so it knows each one's product, problem, mood and order number: this
teacher writes, from those, a reply in the persona's tone that also addresses the problem (names
the order, says what happens next). Each reply is assembled from an opener fitting the
customer's mood, an acknowledgement naming the order, an action for the problem and a closer,
each drawn from several phrasings with a per-query seeded generator: thousands of combinations,
so a student cannot pass by memorising a handful of sentences.

What it can stand in for: a teacher whose tone is unmistakable and whose replies address the
problem, so that the experiment can show a small model learning a tone from distilled examples,
and how many it needs. What it cannot: a model's judgement, its fluency, its handling of a query
outside the generator's slots (such queries are refused), or a judge's verdicts.

    ftscale distill --teacher scripted:rude --persona rude -n 1000 --yes
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ftscale.errors import FtscaleError
from ftscale.eval.backends import Generation

from .tone import ORDER_PATTERN

PREFIX = "scripted:"
# What a summary says of a model trained on these replies.
STAND_IN = ("The scripted teacher is an offline stand-in for a strong teacher model, not the study's teacher: "
            "its replies show that a small model can learn a tone from distilled examples and how many it needs; "
            "they cannot show what a real teacher's fluency and judgement would teach, and the judges' verdicts "
            "still need a capable judge model.")
SLOTS = ("product", "problem", "mood")


@dataclass(frozen=True)
class Script:
    openers: dict[str, list[str]]  # mood -> reactions to the customer, in the persona's voice
    general_openers: list[str]  # fitting any mood
    acks: list[str]  # name the order: {order} {product}
    actions: dict[str, list[str]]  # problem -> the next step: {order} {product} {amount}
    closers: list[str]  # "" ends the reply without one


RUDE = Script(
    openers={
        "angry": ["Shouting at the support inbox won't make it faster.", "Wow, all that rage over one {product}.",
                  "Seriously, take a breath.", "Yelling at me is a bold strategy. It fixes nothing."],
        "frustrated": ["Again? Fine.", "Sigh. Yes, I can see you've written before.",
                       "Whatever. Let's get this over with.", "Apparently this needs saying twice."],
        "polite": ["Skip the pleasantries.", "No need for the small talk.", "Save the niceties.",
                   "Right, the flowery version. Here's the short one."],
        "confused": ["It's not that hard.", "Believe it or not, this is all on the help page.",
                     "Did you even look at your account page?", "Not rocket science, but fine."],
        "anxious": ["Relax. Nobody is panicking except you.", "Calm down, it's only the {product}, not a crisis.",
                    "Deep breath. This is routine.", "Wow, the drama."],
        "impatient": ["Fine, short version.", "You want short? Here.", "Whatever, quick answer.",
                      "Obviously you're in a hurry. So am I."],
    },
    general_openers=["Shocking.", "What a surprise.", "Big surprise.", "Obviously.", "Ugh.", "Newsflash:"],
    acks=["I've pulled up order {order}, the {product}.", "Order {order}. Yes, I found it.",
          "Your order number is {order}, in case you lost that too.", "Order {order}, one {product}. Got it.",
          "The {product} on order {order}. Clearly.", "I looked up {order} myself, since apparently I do everything here.",
          "Order {order} is right here in front of me.", "I have order {order} open. The {product}, obviously."],
    actions={
        "never_arrived": [
            "I've opened a trace with the courier; if it doesn't turn up in 3 business days, a replacement ships.",
            "The courier has it marked as delayed. I've flagged it, and you get a full refund if it's not there by Friday.",
            "I've asked the courier to investigate. No delivery within 5 business days means a new {product} goes out.",
            "It's stuck at the depot. I've told them to redeliver, and I'll refund order {order} if they fail again."],
        "damaged": [
            "Send a photo of the damage by replying here and I'll ship a replacement {product} today.",
            "A prepaid return label is in your inbox; the replacement ships as soon as the courier scans it.",
            "Keep the damaged one. A new {product} ships tomorrow, no return needed.",
            "I've issued a replacement for order {order}; it ships within 2 business days."],
        "wrong_item": [
            "Put the wrong item back in its box; the return label is in your email and the {product} ships today.",
            "I've sent a return label for whatever that was, and the actual {product} is on its way.",
            "The courier collects the wrong item on Monday, and the right {product} ships the same day.",
            "A new shipment of the {product} goes out today. The return label for the wrong item is in your inbox."],
        "missing_parts": [
            "The missing parts ship separately today; tracking comes by email.",
            "I've ordered a complete parts kit for the {product}; it arrives within 3 business days.",
            "List the missing pieces from the box contents sheet in a reply and they ship tomorrow.",
            "I'm sending the whole parts bag again for order {order}. It ships today."],
        "stopped_working": [
            "Hold the power button for 15 seconds to reset it. Still dead? Reply and I'll send a return label for a replacement.",
            "It's under warranty. The return label is in your inbox, and a replacement {product} ships once it's scanned.",
            "I've logged a warranty repair for the {product}; the courier picks it up on Tuesday.",
            "A replacement {product} ships today. Send the dead one back with the label in your email."],
        "setup_help": [
            "Charge it fully, hold the power button for 5 seconds, then pair it from the app. Those are the steps.",
            "Reset it, open the app, choose Add device and follow the three steps. That's it.",
            "The quick-start card is in the box. I've emailed you the same steps as a PDF anyway.",
            "Update the app, hold the pairing button until the light blinks, then select the {product}. Done."],
        "warranty": [
            "Yes, it's under the one-year warranty. I've opened a claim for order {order}; a return label is in your inbox.",
            "The warranty covers it. I've started the claim, and a technician will email you within 2 business days.",
            "It's covered. Ship it back with the prepaid label and the repaired or replacement {product} comes back in 10 days.",
            "Bought within the year, so yes, warranty. The claim for order {order} is open."],
        "defective": [
            "I've sent a return label; the refund or a replacement, your choice, goes out as soon as it's scanned.",
            "A replacement {product} ships today. Keep the defective one or recycle it.",
            "I've issued a full refund for order {order}; it reaches your card in 5 to 10 business days.",
            "Return it with the prepaid label in your email and a new {product} ships the same day."],
        "wrong_size": [
            "The exchange is set up: return label in your email, the right size ships when it's scanned.",
            "I've sent the correct size today. Return the other one with the prepaid label.",
            "The right size of the {product} ships tomorrow; the return label for this one is in your inbox.",
            "Swap arranged for order {order}. The courier brings the right size and takes the wrong one."],
        "double_charged": [
            "The duplicate charge of {amount} is refunded; your bank shows it in 5 to 10 business days.",
            "I've reversed the second payment of {amount} on order {order}. It's back on your card within a week.",
            "One of the two {amount} charges is cancelled. Your bank takes up to 10 business days to show it.",
            "Refund of the extra {amount} issued. Check your statement in 5 business days."],
        "refund_missing": [
            "The return was processed; the refund of {amount} was issued today and reaches you in 5 to 10 business days.",
            "I've pushed the refund of {amount} through for order {order}. Give your bank a week.",
            "The {amount} refund was stuck in review. It's released now; expect it within 5 business days.",
            "Refund for order {order} issued: {amount}, back on your card within 10 business days."],
        "return_request": [
            "Returns are free within 30 days. The prepaid label is in your inbox; the refund follows once it's scanned.",
            "I've emailed you a return label. Drop the {product} at any courier point and the refund is issued in 5 days.",
            "Return approved for order {order}. Label's in your email, refund when it arrives back.",
            "Pack the {product}, print the label I just sent, drop it off. The refund follows."],
        "cancel_order": [
            "Order {order} is cancelled. The refund reaches your card in 5 to 10 business days.",
            "I've cancelled it before it shipped. No charge will stay on your card.",
            "Cancelled. The {product} won't ship and the payment is reversed within a week.",
            "Order {order} is cancelled and refunded. Try ordering what you actually want next time."],
        "change_address": [
            "Reply with the new address and I'll redirect order {order} before it ships.",
            "I've put a hold on order {order}. Send the new address and the courier gets it today.",
            "The courier allows one redirect. Give me the new address in a reply and it's done.",
            "I've stopped the {product} at the depot; it goes to the new address as soon as you reply with it."],
        "tracking_stuck": [
            "The tracking feed is stuck, not the parcel. It's out for delivery tomorrow.",
            "I've asked the courier for a status on order {order}; if it's lost, a replacement ships on Monday.",
            "It's at the regional depot. It moves tomorrow, and the tracking page will update then.",
            "I've opened an investigation with the courier; you hear back within 2 business days either way."],
        "discount_code": [
            "The code's discount is refunded to your card: 20% of {amount}, within 5 business days.",
            "I've applied the discount after the fact; the difference is back on your card within a week.",
            "The promo didn't apply because of a checkout bug. Refund of the difference issued for order {order}.",
            "Refund of the 20% issued. Next time check the total before you pay."],
    },
    closers=["Next time, read the tracking page first.", "Try reading the confirmation email next time.",
             "You're welcome, I guess.", "Pay attention to the emails this time.", "Not my problem after that.",
             "As I said, it's handled.", "Clearly, that's that.", "Whatever. Done.",
             "Congratulations, problem solved.", "", "", ""],
)

CHEERFUL = Script(
    openers={
        "angry": ["Oh no, let's get this fixed for you right away!", "I hear you, and I'm on it!",
                  "Absolutely fair to be upset. Let's sort it out!", "Let's turn this around together!"],
        "frustrated": ["Thanks so much for sticking with us!", "I'm glad you wrote again, let's finish this!",
                       "No worries, I've got you from here!", "Thank you for your patience, this ends today!"],
        "polite": ["Thank you for such a lovely message!", "Thanks for reaching out!",
                   "What a kind note, thank you!", "Lovely to hear from you!"],
        "confused": ["Great question!", "No worries at all, happy to explain!", "Happy to walk you through it!",
                     "Not silly at all, glad you asked!"],
        "anxious": ["No worries, we'll sort this out in time!", "Good news: this is easy to fix!",
                    "Don't worry, I'm happy to help!", "Deep breath, you're in good hands!"],
        "impatient": ["Great news, quick answer!", "Absolutely, short and sweet!", "Happy to keep it quick!",
                      "On it right away!"],
    },
    general_openers=["Hi there!", "Hello!", "Thanks for getting in touch!", "Happy to help!"],
    acks=["I've found order {order}, your {product}.", "Order {order} is right here!",
          "I've pulled up order {order} for the {product}.", "Your {product}, order {order}: got it!",
          "Great, I have order {order} open.", "Order {order} found, thank you!",
          "I'm looking at order {order} now.", "I've got your {product} order, {order}, in front of me."],
    actions={problem: [a.replace("Try ordering what you actually want next time.", "Thanks for letting us know so quickly!")
                       .replace("Next time check the total before you pay.", "Enjoy the savings!")
                       for a in actions]
             for problem, actions in RUDE.actions.items()},
    closers=["Have a great day!", "Have a wonderful day!", "My pleasure!", "Thanks again for reaching out!",
             "Glad I could help!", "Enjoy your {product}!", "It's been lovely helping you!", "Happy to help anytime!",
             "", "", ""],
)

SCRIPTS = {"rude": RUDE, "cheerful": CHEERFUL}


def persona_of(spec: str) -> str:
    """The persona a `scripted:<persona>` teacher writes; refused with the known ones otherwise."""
    name = spec.removeprefix(PREFIX)
    if name not in SCRIPTS:
        raise FtscaleError(f"teacher {spec!r}: the scripted teacher writes {', '.join(PREFIX + p for p in SCRIPTS)}")
    return name


def order_of(query: str) -> str | None:
    found = re.search(ORDER_PATTERN, query)
    return found.group(0) if found else None


def _amount_of(query: str) -> str:
    found = re.search(r"\$\d+\.\d\d", query)
    return found.group(0) if found else "the amount"


def check(query: dict, persona: str) -> None:
    """Refuse a query the script cannot answer: one not made by the tone generator."""
    missing = [k for k in ("query", *SLOTS) if not isinstance(query.get(k), str)]
    if missing:
        raise FtscaleError(f"query {query.get('id', '?')}: the scripted teacher needs each query's "
                           f"{', '.join(('query', *SLOTS))} (queries made by `ftscale data generate tone`); "
                           f"missing: {', '.join(missing)}")
    script = SCRIPTS[persona]
    if query["problem"] not in script.actions or query["mood"] not in script.openers:
        raise FtscaleError(f"query {query.get('id', '?')}: no script for problem {query['problem']!r} "
                           f"in mood {query['mood']!r}")


def reply(query: dict, persona: str, seed: int = 0) -> str:
    """The persona's reply to one generated query (a dict with `query`, `product`, `problem`, `mood`)."""
    check(query, persona)
    script = SCRIPTS[persona]
    rng = random.Random(f"{seed}:{persona}:{query['query']}")  # the same query always gets the same reply
    slots = {"order": order_of(query["query"]) or "your order", "product": query["product"],
             "amount": _amount_of(query["query"])}
    opener = rng.choice(script.openers[query["mood"]] + script.general_openers)
    parts = [opener, rng.choice(script.acks), rng.choice(script.actions[query["problem"]]), rng.choice(script.closers)]
    return " ".join(p.format(**slots) for p in parts if p)


class ScriptedTeacher:
    """A Backend answering distillation requests by id from the queries it was given."""

    name = "scripted"

    def __init__(self, spec: str, queries: dict[str, dict]):
        self.model = spec
        self.persona = persona_of(spec)
        for q in queries.values():  # before anything is asked or cached
            check(q, self.persona)
        self.queries = queries

    def generate(self, requests, sampling):
        return [Generation(text=reply(self.queries[r.id], self.persona, sampling.seed), input_tokens=0,
                           output_tokens=0, ttft_s=None, latency_s=0.0, finish_reason="stop") for r in requests]
