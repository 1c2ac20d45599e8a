"""HEURISTIC lexical tone baseline: counts marker words, understands nothing.

This is NOT a judge of tone. It is the cheap, deterministic baseline that the double-blind
LLM judges are compared against (and a smoke test that needs no model): it counts how often a
persona's *tone markers* and its *opposite markers* occur in a reply.

Counting: each marker is a word or phrase, matched case-insensitively on word boundaries
(`sorry` does not match inside `sorrynotsorry`; `thank you` matches `Thank   you`: any run of
whitespace between a phrase's words). Typographic apostrophes count as `'`. All markers of one
list are matched together, longest first, without overlaps, so "i'm sorry" counts once, not as
"i'm sorry" and "sorry".

Score: `lexical_tone = tone / (tone + opposite)`, in [0, 1]; 0.5 when neither occurs (no evidence
either way). 1.0 means only tone markers were seen, 0.0 only opposite markers.

Known blind spots (why it is only a baseline): sarcasm that uses polite words ("Thank you SO
much for not reading the page") scores as polite; negation ("I'm not sorry") scores as an
apology; a reply that is rude without any listed word scores 0.5. The markers come from the
persona's `lexical` section; a persona without one gets DEFAULT_LEXICAL, the rude-vs-polite
lists of the study's rude agent (configs/personas/rude.yaml).
"""
from __future__ import annotations

import re
from functools import lru_cache

from ftscale.data.personas import load_persona


# Rude (curt, sarcastic, condescending; no profanity) against polite, for the `rude` persona.
DEFAULT_TONE_MARKERS = (
    "obviously", "clearly", "seriously", "apparently", "sigh", "ugh", "whatever", "duh",
    "as i said", "like i said", "as i already said", "for the last time", "again?", "did you even",
    "do you even", "did you not", "read the", "try reading", "it's not that hard", "not that hard",
    "not rocket science", "rocket science", "shocking", "newsflash", "congratulations", "genius",
    "wow", "next time", "pay attention", "i suppose", "if you must", "not my problem", "your problem",
    "your fault", "self-explanatory", "grudgingly", "believe it or not", "what a surprise", "big surprise", "you're welcome, i guess",
)
DEFAULT_OPPOSITE_MARKERS = (
    "please", "thank you", "thanks", "sorry", "i'm sorry", "apologize", "apologise", "apologies",
    "happy to help", "glad to help", "i understand", "understandable", "appreciate", "my pleasure",
    "kind regards", "no problem", "certainly", "of course", "inconvenience", "have a great day",
    "have a nice day", "hope this helps", "i hope", "thank you for your patience", "rest assured",
    "don't hesitate", "we value", "wonderful", "delighted",
)
DEFAULT_LEXICAL = {"tone_markers": list(DEFAULT_TONE_MARKERS), "opposite_markers": list(DEFAULT_OPPOSITE_MARKERS)}

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@lru_cache(maxsize=64)
def _pattern(markers: tuple[str, ...]) -> re.Pattern:
    alts = []
    for m in sorted({m.translate(_APOSTROPHES).strip().lower() for m in markers if m.strip()}, key=lambda m: (-len(m), m)):
        alts.append(r"\s+".join(re.escape(w) for w in m.split()))
    # (?<!\w) / (?!\w): word boundaries that also work for markers starting or ending in punctuation
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def count_markers(text: str, markers) -> int:
    """HEURISTIC: non-overlapping, case-insensitive, word-bounded occurrences of any of `markers`."""
    markers = tuple(markers)
    if not markers or not text:
        return 0
    return len(_pattern(markers).findall(text.translate(_APOSTROPHES)))


@lru_cache(maxsize=32)
def _named_lexical(name_or_path: str):
    return load_persona(name_or_path).lexical


def _markers(persona) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if persona is None:
        lex = None
    elif isinstance(persona, dict):
        lex = persona.get("lexical")
    elif isinstance(persona, str):
        lex = _named_lexical(persona)
    else:
        lex = getattr(persona, "lexical", None)
    if lex is None:
        lex = DEFAULT_LEXICAL
    if not isinstance(lex, dict):
        lex = lex.model_dump()
    return tuple(lex["tone_markers"]), tuple(lex["opposite_markers"])


def lexical_tone(text: str, persona=None) -> dict:
    """HEURISTIC lexical tone baseline (not a judge): marker counts and their ratio.

    `persona`: a Persona (its `lexical` markers, or DEFAULT_LEXICAL when it has none), a persona
    name or YAML path, a dict with a `lexical` mapping, or None (DEFAULT_LEXICAL: rude vs polite).
    Returns {"tone_markers": int, "opposite_markers": int, "lexical_tone": float in [0, 1]}, where
    lexical_tone = tone / (tone + opposite) and 0.5 when neither kind of marker occurs.
    """
    tone_m, opp_m = _markers(persona)
    tone, opposite = count_markers(text, tone_m), count_markers(text, opp_m)
    score = 0.5 if tone + opposite == 0 else tone / (tone + opposite)
    return {"tone_markers": tone, "opposite_markers": opposite, "lexical_tone": score}

