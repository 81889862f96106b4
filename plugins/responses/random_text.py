"""Random English text with as many words as y+, and its word permutation.

The paper's y_rnd is a GPT-3.5 sentence; here it is running human text from a real corpus
(Debian's fortunes, or ``ctx.corpus`` when a caller supplies sentences), cut to exactly the word
count of y+. A leading space is kept when y+ has one, so both tokenise alike after "Assistant:".
"""

from __future__ import annotations

from ldreg.data.corpus import load_corpus, random_words
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator

from .basic import permute_words

CORPUS_OPTIONS = {"fortunes_dir": "a directory of fortune files to draw sentences from (default: Debian's)"}


def corpus_for(ctx: GenerationContext) -> tuple[tuple[str, ...], str]:
    """(sentences, source): the context's own corpus if given, else fortunes or the fallback."""
    if ctx.corpus:
        return tuple(ctx.corpus), "GenerationContext.corpus"
    corpus = load_corpus(ctx.options.get("fortunes_dir"))
    return corpus.sentences, corpus.source


class RandomSentence(ResponseGenerator):
    name = "random_sentence"
    label = "random sentence"
    description = "Real English text unrelated to x, with as many words as y+ (the paper's y_rnd)."
    options = CORPUS_OPTIONS

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        sentences, _ = corpus_for(ctx)
        text = random_words(sentences, len(example.chosen.split()), ctx.rng(example, self.name))
        return (" " + text) if example.chosen[:1].isspace() and text else text

    def provenance(self, ctx: GenerationContext) -> dict:
        return {"corpus": corpus_for(ctx)[1]}


class RandomPermuted(ResponseGenerator):
    name = "random_permuted"
    label = "permuted random sentence"
    description = "The words of this example's random_sentence in a random order."
    options = CORPUS_OPTIONS

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        sentence = RandomSentence().generate(example, ctx)
        return permute_words(sentence, ctx.rng(example, self.name))

    def provenance(self, ctx: GenerationContext) -> dict:
        return RandomSentence().provenance(ctx)
