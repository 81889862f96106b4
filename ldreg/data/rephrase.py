"""Word-level rephrases with a lexicon: meaning-keeping (synonyms) and format-keeping (same POS).

The paper's GPT-3.5 rephrases (Appendix D.1) cannot be regenerated offline; these two stand-ins
probe the same two directions. ``semantic_rephrase`` swaps content words for WordNet synonyms of
their most frequent sense (the meaning stays, the tokens change); ``format_rephrase`` swaps content
words for other words of the same part of speech (the sentence's shape stays, the meaning goes).
Punctuation, spacing and capitalisation are kept byte for byte, function words are never touched,
and regular inflections (-s, -es, -ies, -ed, -ing) are undone to find the lemma and redone on the
replacement. Everything random comes from the ``rng`` passed in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ldreg.data.wordnet import Lexicon

WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")

# Closed-class words WordNet also lists (e.g. "be", "can", "will", "a" as nouns): never replaced.
FUNCTION_WORDS = frozenset("""
a about above after again against all also am an and any are as at be been before being below
between both but by can could did do does doing done down during each either else ever every few for
from further get gets got had has have having he her here hers herself him himself his how i if in
into is it its itself just let like may me might more most much must my myself neither no nor not now
of off on once one only or other our ours ourselves out over own per quite rather same shall she
should so some such than that the their theirs them themselves then there these they this those
though through thus to too under until up upon us very was we well were what when where whether
which while who whom whose why will with within without would yes yet you your yours yourself
yourselves okay ok oh hi hello please thanks thank sure really lot lots way thing things something
anything nothing everything someone anyone everyone people make made go going went
""".split())

# (suffix to strip, ending to add) per POS: WordNet's own morphy detachment rules.
DETACH = {
    "n": (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("s", "")),
    "v": (("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""), ("s", "")),
    "a": (),
    "r": (),
}


@dataclass(frozen=True)
class Analysis:
    """A surface word as lemma + POS + the inflection to redo (suffix stripped, '' if base form)."""

    lemma: str
    pos: str
    suffix: str = ""


def analyse(word: str, lexicon: Lexicon) -> Analysis | None:
    """The lemma and POS of a content word, or None for function words and unknown words."""
    lower = word.lower()
    if lower in FUNCTION_WORDS or len(lower) < 3 or not lower.isalpha():
        return None
    pos = lexicon.pos_of(lower)
    if pos is not None:
        return Analysis(lower, pos)
    for pos in ("n", "v"):
        for strip, add in DETACH[pos]:
            if lower.endswith(strip) and len(lower) > len(strip) + 2:
                lemma = lower[: -len(strip)] + add
                if lemma not in FUNCTION_WORDS and lexicon.pos_of(lemma) == pos:
                    return Analysis(lemma, pos, strip)
    return None


def inflect(lemma: str, suffix: str) -> str:
    """Redo a regular inflection on a (single-word) lemma."""
    if not suffix:
        return lemma
    if suffix in ("s", "es", "ies", "ches", "shes", "ses", "xes", "zes"):
        if lemma.endswith("y") and lemma[-2:-1] not in tuple("aeiou"):
            return lemma[:-1] + "ies"
        return lemma + ("es" if lemma.endswith(("s", "x", "z", "ch", "sh")) else "s")
    if suffix == "ed":
        return lemma + ("d" if lemma.endswith("e") else "ed")
    if suffix == "ing":
        return (lemma[:-1] if lemma.endswith("e") and not lemma.endswith("ee") else lemma) + "ing"
    return lemma


def match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass(frozen=True)
class Swap:
    """One replacement made: where, what was there, what replaced it, and the POS used."""

    position: int
    before: str
    after: str
    pos: str


def _rewrite(text: str, choose, rng: random.Random, rate: float) -> tuple[str, list[Swap]]:
    pieces, swaps, last = [], [], 0
    for index, match in enumerate(WORD.finditer(text)):
        word = match.group()
        pieces.append(text[last:match.start()])
        last = match.end()
        replacement = None
        if rng.random() < rate:
            replacement = choose(word, rng)
        if replacement is None:
            pieces.append(word)
            continue
        new, pos = replacement
        new = match_case(word, new)
        pieces.append(new)
        swaps.append(Swap(index, word, new, pos))
    pieces.append(text[last:])
    return "".join(pieces), swaps


def semantic_rephrase(text: str, lexicon: Lexicon, rng: random.Random, rate: float = 0.5,
                      senses: int = 1) -> tuple[str, list[Swap]]:
    """Replace each content word, with probability ``rate``, by a synonym (most frequent sense)."""

    def choose(word: str, rng: random.Random):
        found = analyse(word, lexicon)
        if found is None:
            return None
        options = [o for o in lexicon.synonyms(found.lemma, found.pos, senses)
                   if len(o) >= 3 and o.lower() not in FUNCTION_WORDS]  # "inch" -> "in" is no rephrase
        if found.suffix:  # an inflected word takes only single-word synonyms we can inflect
            options = [o for o in options if o.isalpha()]
        if not options:
            return None
        return inflect(rng.choice(options), found.suffix), found.pos

    return _rewrite(text, choose, rng, rate)


def format_rephrase(text: str, lexicon: Lexicon, rng: random.Random, rate: float = 0.7
                    ) -> tuple[str, list[Swap]]:
    """Replace each content word, with probability ``rate``, by another common word of its POS."""

    def choose(word: str, rng: random.Random):
        found = analyse(word, lexicon)
        if found is None:
            return None
        pool = lexicon.lemmas(found.pos)
        if not pool:
            return None
        for _ in range(8):  # a different word, not a function word
            new = rng.choice(pool)
            if new != found.lemma and new not in FUNCTION_WORDS:
                return inflect(new, found.suffix), found.pos
        return None

    return _rewrite(text, choose, rng, rate)
