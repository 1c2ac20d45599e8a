"""HEURISTIC "addresses the problem" check of a customer-service reply: counts words, understands nothing.

A reply addresses the customer's problem when it names the order (its number as the customer
wrote it, or the product) AND states a next step: one of NEXT_STEPS, words of what a support desk
does about an order (refund, replacement, return label, cancel, courier, warranty, business
days...). Matched like the lexical tone baseline's markers (eval/lexical_tone.py: case-insensitive,
on word boundaries). The list is deliberately generic, not the scripted teacher's phrasings.

Blind spots: a reply that names the order and promises something absurd passes; a correct reply
that says "we'll get that sorted" without any listed word fails. Judging whether the problem is
really solved needs a capable judge model (the tone task's `judge.addresses_problem`).
"""
from __future__ import annotations

import re

from ftscale.data.tone import ORDER_PATTERN

from .lexical_tone import count_markers

NEXT_STEPS = (
    "refund", "refunded", "refunds", "replacement", "replace", "replaced", "return label", "prepaid label", "label",
    "return it", "send it back", "ship", "ships", "shipped", "shipping", "on its way", "dispatch", "dispatched",
    "cancel", "cancelled", "canceled", "redirect", "new address", "courier", "carrier", "investigation", "investigate",
    "trace", "warranty", "claim", "repair", "technician", "exchange", "reset", "restart", "pair", "update the app",
    "steps", "business days", "within", "tomorrow", "today", "reverse", "reversed", "credit", "credited",
)


def addresses_problem(reply: str, reference: dict) -> dict:
    """{"addresses": bool, "names_order": bool, "next_step": bool} for a reply to `reference["query"]`
    about `reference["product"]`."""
    text = reply or ""
    order = re.search(ORDER_PATTERN, reference.get("query") or "")
    product = reference.get("product") or ""
    names = bool(order and order.group(0) in text) or bool(product and product.lower() in text.lower())
    step = count_markers(text, NEXT_STEPS) > 0
    return {"addresses": names and step, "names_order": names, "next_step": step}
