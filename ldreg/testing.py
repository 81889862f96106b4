"""Helpers for a plugin author's own pytest suite (as pytest has pytester and Datasette datasette-test).

Everything here is real: the plugin goes through the same PluginManager, registration checks and
call guards as in a run; the model is a real Hugging Face causal LM, only tiny and built from a
config (no download); log-probabilities come from that model on real English preference pairs
shipped with ldreg (the authors' Anthropic-HH probe records). A check that fails raises an
AssertionError saying what broke, so a plugin's test reads::

    from ldreg import testing

    def test_my_loss():
        plugins = testing.load_plugin("my_plugin.py")        # or the module / an object
        testing.check_loss(plugins.losses.get("my_loss"))

    def test_my_generator():
        plugins = testing.load_plugin(my_plugin_module)
        testing.check_generator(plugins.responses.get("my_type"))
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ldreg.losses import LossDefinition, SequenceLogps
from ldreg.plugin_dir import MODULE_PREFIX
from ldreg.registry import Plugins, ResponseRegistry, load_plugins
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator

MAX_LENGTH, MAX_PROMPT_LENGTH = 64, 32  # tokens: small batches, every example still has a response


def load_plugin(*plugins: object, third_party: bool = False) -> Plugins:
    """A fresh ``Plugins`` with ldreg's built-ins and ``plugins``, none of them packaged.

    Each argument is a path to a ``.py`` file (loaded as ``--plugins-dir`` loads it, named after the
    file), a module, or any object with ``@hookimpl`` methods. Registration is checked exactly as at
    start-up, so a misspelt hook or a bad declaration raises the PluginError a user would see.
    Other installed plugins (your own installed copy included) and LDREG_PLUGINS_DIR are left out
    unless ``third_party=True``, so a test sees only what it names.
    """
    files = [p for p in plugins if isinstance(p, (str, Path))]
    objects = [p for p in plugins if not isinstance(p, (str, Path))]
    return load_plugins(objects, files=files, third_party=third_party)


def examples(n: int = 4, split: str = "train") -> list[PreferenceExample]:
    """``n`` real preference pairs: the first records of the authors' Anthropic-HH probe file."""
    from ldreg.data.authors import authors_file

    records = []
    with authors_file("helpful-base", split).open(encoding="utf-8") as f:
        for i, line in zip(range(n), f):
            r = json.loads(line)
            records.append(PreferenceExample(i, r["prompt"], r["chosen"], r["rejected"]))
    return records


@dataclass
class TinyModel:
    """A tiny GPT-NeoX (or Llama) saved in ``path``, with its tokenizer, loaded on the CPU."""

    path: Path
    model: Any
    tokenizer: Any


@lru_cache(maxsize=2)
def _built(architecture: str) -> Path:
    from ldreg.data.corpus import load_corpus
    from ldreg.models import build_tiny_model

    texts = [e.prompt + e.chosen for e in examples(200)] + list(load_corpus().sentences)[:200]
    directory = Path(tempfile.mkdtemp(prefix=f"ldreg-tiny-{architecture}-"))
    return build_tiny_model(directory, texts, vocab_size=512, seed=0, architecture=architecture)


def tiny_model(architecture: str = "gpt_neox") -> TinyModel:
    """A fresh tiny model (hidden 64, 2 layers, a 512-token BPE trained on real text), built from
    config once per process and loaded anew at each call, so a test may train it freely."""
    from ldreg.models import load_model, load_tokenizer

    path = _built(architecture)
    return TinyModel(path, load_model(path), load_tokenizer(path))


@dataclass
class LogitBatch:
    """One forward pass over a batch of pairs: the logits and labels of y+ and y- (``[B, T, V]``)."""

    chosen_logits: torch.Tensor
    chosen_labels: torch.Tensor
    rejected_logits: torch.Tensor
    rejected_labels: torch.Tensor


def logit_batch(tiny: TinyModel, pairs: Sequence[PreferenceExample] | None = None) -> LogitBatch:
    """Run ``tiny``'s model on ``pairs`` (default: four real ones), with grad."""
    from ldreg.data.tokenize import TokenLimits, encode_preference
    from ldreg.dynamics.logprobs import collate

    pairs = list(pairs) if pairs is not None else examples(4)
    limits = TokenLimits(max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH)
    encoded = [encode_preference(tiny.tokenizer, e.prompt, e.chosen, e.rejected, limits) for e in pairs]
    batch = collate([c for c, _ in encoded] + [r for _, r in encoded], tiny.tokenizer.pad_token_id)
    logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    b = len(pairs)
    return LogitBatch(logits[:b], batch.labels[:b], logits[b:], batch.labels[b:])


def sequence_logps(tiny: TinyModel, pairs: Sequence[PreferenceExample] | None = None,
                   chosen_prob: float | None = None) -> SequenceLogps:
    """A real ``SequenceLogps`` for ``pairs``: the policy's sums (with grad), the reference's (a
    frozen copy of the model, so equal at the start, without grad), token counts, and a soft label
    ``chosen_prob`` for every pair when given."""
    from ldreg.dynamics.logprobs import sequence_logps as summed

    batch = logit_batch(tiny, pairs)
    chosen, chosen_tokens = summed(batch.chosen_logits, batch.chosen_labels)
    rejected, rejected_tokens = summed(batch.rejected_logits, batch.rejected_labels)
    prob = None if chosen_prob is None else torch.full_like(chosen.detach(), float(chosen_prob))
    return SequenceLogps(chosen, chosen_tokens, rejected, rejected_tokens,
                         chosen.detach().clone(), rejected.detach().clone(), prob)


@dataclass
class LossCheck:
    """What ``check_loss`` measured: the loss before and after one SGD step of ``lr``, and ||G||."""

    loss_before: float
    loss_after: float
    lr: float
    residual_norm: float


def _loss_value(definition: LossDefinition, tiny: TinyModel, params: Mapping[str, Any], chosen_prob: float | None,
                reference: SequenceLogps | None = None) -> torch.Tensor:
    logps = sequence_logps(tiny, chosen_prob=chosen_prob)
    if reference is not None:  # the reference stays where it was before the step
        logps.ref_chosen, logps.ref_rejected = reference.ref_chosen, reference.ref_rejected
    return definition(logps, **params).loss


def check_loss(definition: LossDefinition, params: Mapping[str, Any] | None = None, lr: float = 1e-2,
               chosen_prob: float = 0.7, tiny: TinyModel | None = None) -> LossCheck:
    """Check a loss against the contract on a tiny real model; raise AssertionError saying what broke.

    1. its declaration is sound: ``defaults`` match ``compute``'s signature, constraints hold for
       the defaults (the checks registration runs), and ``params`` pass ``check_params``;
    2. called on real log-probs it returns a guarded ``LossOutput`` (0-dim, finite, with grad);
    3. the residual G = dL/dz by autograd (as the engine derives it) is finite and not all zero;
    4. one SGD step on the model lowers the loss: the gradient points downhill. A step of ``lr``
       that overshoots (a squared loss such as IPO's can) is retried at ``lr``/10, down to
       ``lr``/1000, from the same weights, before the check fails.

    ``chosen_prob``: the soft label every pair carries (``None``: none, as hard-labelled data).
    """
    from ldreg.dynamics.residual import residual_grads

    assert isinstance(definition, LossDefinition), f"expected a LossDefinition, got {definition!r}"
    problems = definition.declaration_problems()
    assert not problems, f"loss {definition.name!r} is declared wrongly: {'; '.join(problems)}"
    params = dict(params or {})
    problems = definition.check_params(params)
    assert not problems, f"params for loss {definition.name!r}: {'; '.join(problems)}"
    tiny = tiny or tiny_model()
    batch = logit_batch(tiny)
    start = sequence_logps(tiny, chosen_prob=chosen_prob)
    _, g_chosen, g_rejected = residual_grads(
        definition, params, batch.chosen_logits, batch.chosen_labels, batch.rejected_logits, batch.rejected_labels,
        ref_chosen=start.ref_chosen, ref_rejected=start.ref_rejected, chosen_prob=start.chosen_prob)
    grads = [g for g in (g_chosen, g_rejected) if g is not None]
    assert all(torch.isfinite(g).all() for g in grads), f"loss {definition.name!r}: G = dL/dz is not finite"
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert norm > 0, (f"loss {definition.name!r}: G = dL/dz is zero on every token; "
                      f"the loss does not depend on the log-probs")
    weights = {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}
    loss = _loss_value(definition, tiny, params, chosen_prob, start)
    loss.backward()
    before = float(loss.detach())
    grads = [(p, p.grad.detach().clone()) for p in tiny.model.parameters() if p.grad is not None]
    tried = []
    for step in (lr, lr / 10, lr / 100, lr / 1000):
        tiny.model.load_state_dict(weights)
        with torch.no_grad():
            for p, g in grads:
                p.sub_(step * g)
            after = float(_loss_value(definition, tiny, params, chosen_prob, start))
        tried.append(f"lr {step:g}: {after:.6g}")
        if after < before:
            return LossCheck(before, after, step, norm)
    raise AssertionError(f"loss {definition.name!r} did not decrease after one SGD step from {before:.6g} "
                         f"({'; '.join(tried)}): its gradient does not point downhill")


def generation_context(pairs: Sequence[PreferenceExample] | None = None, tiny: TinyModel | None = None,
                       seed: int = 0, options: Mapping[str, Any] | None = None) -> GenerationContext:
    """A context like a run's: the pairs as both pools, real English sentences as the corpus, and a
    tiny model and tokenizer when given (for ``needs_model`` generators)."""
    from ldreg.data.corpus import load_corpus

    pairs = list(pairs) if pairs is not None else examples(8)
    return GenerationContext(seed=seed, train_pool=pairs, test_pool=pairs, corpus=list(load_corpus().sentences),
                             model=tiny.model if tiny else None, tokenizer=tiny.tokenizer if tiny else None,
                             options=dict(options or {}))


def check_generator(generator: ResponseGenerator, pairs: Sequence[PreferenceExample] | None = None,
                    tiny: TinyModel | None = None, options: Mapping[str, Any] | None = None) -> list[str]:
    """Check a response generator on a tiny probing set; return its texts, or raise AssertionError.

    Builds the probing set twice through ldreg's checked path (every text a non-empty string, or
    the PluginError a run would raise), and asserts the two are equal (deterministic given the
    context), that a new seed is accepted, and that ``provenance`` is JSON-safe. A ``needs_model``
    generator gets ``tiny`` (default: a tiny model built here).
    """
    from ldreg.data.probing import build_probing_set

    assert isinstance(generator, ResponseGenerator), f"expected a ResponseGenerator, got {generator!r}"
    assert generator.name, "a generator needs a name"
    if generator.needs_model and tiny is None:
        tiny = tiny_model()
    pairs = list(pairs) if pairs is not None else examples(8)
    registry = ResponseRegistry()  # the real registry: its add() checks the generator as start-up does
    registry.plugin = type(generator).__module__.removeprefix(MODULE_PREFIX)  # a folder plugin: its file's name
    registry.add(generator)

    def build(seed: int) -> list[str]:
        ctx = generation_context(pairs, tiny, seed, options)
        return build_probing_set(pairs, [generator.name], ctx, registry).responses[generator.name]

    first, again = build(0), build(0)
    assert first == again, f"response type {generator.name!r} is not deterministic: two builds with seed 0 differ"
    build(1)
    provenance = generator.provenance(generation_context(pairs, tiny, 0, options))
    try:
        json.dumps(provenance)
    except TypeError as exc:
        raise AssertionError(f"response type {generator.name!r}: provenance() is not JSON-safe: {exc}") from None
    return first
