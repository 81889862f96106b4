"""Response types read straight from the data, and word permutations of them.

None of them reads a generator option: each declares ``options = {}``, so a spec that sets
``probing.options`` for them alone is told the key does nothing.
"""

from __future__ import annotations

from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator


def permute_words(text: str, rng) -> str:
    """The words of ``text`` in a random order, keeping a leading space (BPE cares)."""
    words = text.split()
    rng.shuffle(words)
    lead = " " if text[:1].isspace() else ""
    return lead + " ".join(words)


class Chosen(ResponseGenerator):
    name = "chosen"
    label = "y+"
    description = "y+: the preferred response itself."
    options: dict[str, str] = {}

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        return example.chosen


class Rejected(ResponseGenerator):
    name = "rejected"
    label = "y-"
    description = "y-: the less preferred response itself."
    options: dict[str, str] = {}

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        return example.rejected


class ChosenPermuted(ResponseGenerator):
    name = "chosen_permuted"
    label = "permuted y+"
    description = "The words of y+ in a random order: same tokens, no grammar."
    options: dict[str, str] = {}

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        return permute_words(example.chosen, ctx.rng(example, self.name))
