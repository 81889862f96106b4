"""The response-type contract: how a probing set gets the responses the paper observes.

Each response type of the paper's Appendix D.1 (y+, y-, rephrases, permutations, random
sentences, y+ of other prompts, ...) is produced by one generator plugin. Generators are
deterministic given the context's seed, so that a probing set built twice is the same, and
every run in a comparison probes exactly the same text.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class PreferenceExample:
    """One prompt with its preferred (y+) and less preferred (y-) responses."""

    id: int
    prompt: str
    chosen: str
    rejected: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationContext:
    """What a generator may draw on besides the example itself.

    ``train_pool``/``test_pool`` are the other examples of each split (for "y+ of another
    prompt"); ``corpus`` is a list of real English sentences; ``model``/``tokenizer`` are set only
    when a real model is at hand (self-rephrase, y0); ``seed`` makes every draw reproducible.
    """

    seed: int = 0
    train_pool: Sequence[PreferenceExample] = ()
    test_pool: Sequence[PreferenceExample] = ()
    corpus: Sequence[str] = ()
    model: Any = None
    tokenizer: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def rng(self, example: PreferenceExample, response_type: str) -> random.Random:
        """A generator of its own for each (example, type): adding a type changes no other."""
        key = f"{self.seed}:{example.id}:{response_type}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class ResponseGenerator(ABC):
    """Makes one response type for a probe example. ``name`` is the type's name in specs."""

    name: str = ""
    description: str = ""
    needs_model: bool = False

    @abstractmethod
    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        """The response text of this type for ``example``."""
