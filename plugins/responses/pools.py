"""Responses to other prompts: y+ of another training prompt (j != u) and y+ of a test prompt.

Both are fluent, human-written and irrelevant to x_u: the paper's probe of how far the pull-up
on y+_u spreads to answers of other questions (the hallucination mechanism of Section 4.1).
"""

from __future__ import annotations

from typing import Sequence

from ldreg.data.errors import DataError
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator


def other_chosen(example: PreferenceExample, pool: Sequence[PreferenceExample], rng, pool_name: str,
                 type_name: str) -> str:
    """y+ of a random pool example that is not ``example`` (neither its id nor its prompt)."""
    candidates = [e for e in pool if e.prompt != example.prompt and (pool_name != "train_pool" or e.id != example.id)]
    if not candidates:
        raise DataError(
            f"response type {type_name!r} needs other examples in GenerationContext.{pool_name} "
            f"(got {len(pool)}, none usable for example {example.id}); load that split into the context"
        )
    return rng.choice(candidates).chosen


class IrrelevantTrain(ResponseGenerator):
    name = "irrelevant_train"
    label = "y+ of another train prompt"
    description = "y+ of another training prompt j != u (the authors' irr_train)."
    options: dict[str, str] = {}

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        return other_chosen(example, ctx.train_pool, ctx.rng(example, self.name), "train_pool", self.name)


class IrrelevantTest(ResponseGenerator):
    name = "irrelevant_test"
    label = "y+ of a test prompt"
    description = "y+ of a test prompt, never trained on (the authors' irr_test)."
    options: dict[str, str] = {}

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        return other_chosen(example, ctx.test_pool, ctx.rng(example, self.name), "test_pool", self.name)
