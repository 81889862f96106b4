"""The response-type contract: how a probing set gets the responses the paper observes.

Each response type of the paper's Appendix D.1 (y+, y-, rephrases, permutations, random
sentences, y+ of other prompts, ...) is produced by one generator plugin. Generators are
deterministic given the context's seed, so that a probing set built twice is the same, and
every run in a comparison probes exactly the same text.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class PreferenceExample:
    """One ``prompt`` with its preferred (``chosen``, y+) and less preferred (``rejected``, y-) responses.

    ``id`` is the example's id in its data set (stable across runs); ``extras`` holds the data
    record's other fields that ldreg keeps (e.g. ``chosen_prob``, a soft preference label).
    """

    id: int
    prompt: str
    chosen: str
    rejected: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationContext:
    """What a generator may draw on besides the example itself.

    ``seed`` makes every draw reproducible (use ``rng``); ``train_pool``/``test_pool`` are the
    examples of each split (for "y+ of another prompt"); ``corpus`` is a list of real English
    sentences (empty unless the caller supplies one); ``model``/``tokenizer`` are the run's base
    model and tokenizer, set only when a real model is at hand (self-rephrase, y0); ``options``
    holds generator settings by key (each generator reads its own keys and a default).
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
    """Makes one response type for a probe example. ``name`` is the type's name in specs.

    ``label`` is how charts, legends and captions call the type ("y+", "permuted y+"): one
    vocabulary, set by the plugin that makes the type. A run records the labels of the types it
    probes (in its Sacred ``info``), so the query layer names them without importing plugins.
    """

    name: str = ""
    label: str = ""  # display label; empty: charts show ``name``
    description: str = ""
    needs_model: bool = False

    @property
    def display_label(self) -> str:
        """``label``, or ``name`` where the plugin set no label."""
        return self.label or self.name

    @abstractmethod
    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        """The response text of this type for ``example``: a non-empty string, drawn only from
        ``ctx.rng(example, self.name)`` when random, so that a probing set built twice is the same."""

    def provenance(self, ctx: GenerationContext) -> dict[str, Any]:
        """What made the text beyond the code (a model, a template, a corpus), JSON-safe, recorded in
        the probing set's metadata. The default records nothing extra."""
        return {}


def code_fingerprint(generator: ResponseGenerator) -> str:
    """A SHA-256 (16 hex digits) of the code that makes a generator's text.

    It covers the source files of the generator's package (every ``.py`` beside its module, so a
    helper it imports from a sibling module counts) or, for a top-level module, that file; where
    no file exists (a class defined in a notebook), the class's source, else its qualified name.
    A changed generator therefore gets a new fingerprint, and the probing-set cache a new key.
    """
    cls = type(generator)
    digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}".encode())
    module = sys.modules.get(cls.__module__)
    files: list[Path] = []
    source = getattr(module, "__file__", None)
    if source:
        path = Path(source)
        files = sorted(path.parent.glob("*.py")) if getattr(module, "__package__", "") else [path]
    for file in files:
        try:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        except OSError:
            continue
    if not files:
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            pass
    return digest.hexdigest()[:16]
