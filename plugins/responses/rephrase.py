"""Offline stand-ins for the paper's GPT-3.5 rephrases of y+ and y-, built on WordNet.

``*_rephrase_semantic`` keeps the meaning (content words become synonyms of their most frequent
sense); ``*_rephrase_format`` keeps the shape (content words become other words of the same part
of speech, so the meaning goes). Options in ``ctx.options``: ``semantic_rate`` (default 0.5) and
``format_rate`` (0.7), the chance each content word is replaced; ``wordnet_dir``.
"""

from __future__ import annotations

from ldreg.data.rephrase import format_rephrase, semantic_rephrase
from ldreg.data.wordnet import load_lexicon
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator


class WordNetRephrase(ResponseGenerator):
    """One generator class, four registered types: (chosen|rejected) x (semantic|format)."""

    def __init__(self, source: str, kind: str) -> None:
        self.source, self.kind = source, kind
        self.name = f"{source}_rephrase_{kind}"
        letter = "y+" if source == "chosen" else "y-"
        self.label = f"{letter} rephrase ({kind})"
        self.description = (f"{letter} with content words swapped for WordNet synonyms: same meaning, other tokens."
                            if kind == "semantic" else
                            f"{letter} with content words swapped for other words of the same part of speech: "
                            f"same shape, new meaning.")
        rate = "semantic_rate" if kind == "semantic" else "format_rate"
        default = 0.5 if kind == "semantic" else 0.7
        self.options = {rate: f"the chance each content word is replaced (default {default})",
                        "wordnet_dir": "a WordNet database directory (default: Debian's wordnet-base)"}

    def check_options(self, options: dict) -> list[str]:
        """Spec-time check of this type's options: the replacement rate is a probability."""
        rate = "semantic_rate" if self.kind == "semantic" else "format_rate"
        value = options.get(rate)
        if value is not None and (isinstance(value, (bool, str)) or not 0 <= value <= 1):
            return [f"{rate}: must be a number in [0, 1], got {value!r}"]
        return []

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        lexicon = load_lexicon(ctx.options.get("wordnet_dir"))
        text = getattr(example, self.source)
        rng = ctx.rng(example, self.name)
        if self.kind == "semantic":
            return semantic_rephrase(text, lexicon, rng, float(ctx.options.get("semantic_rate", 0.5)))[0]
        return format_rephrase(text, lexicon, rng, float(ctx.options.get("format_rate", 0.7)))[0]

    def provenance(self, ctx: GenerationContext) -> dict:
        return {"lexicon": load_lexicon(ctx.options.get("wordnet_dir")).source}


REPHRASES = tuple(WordNetRephrase(source, kind) for source in ("chosen", "rejected") for kind in ("semantic", "format"))
