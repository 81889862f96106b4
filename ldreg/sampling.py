"""Sampling responses from a causal LM, seeded: the one generation path of ldreg.

Two users: the response types a model writes (y0, self-rephrases: ``generate_continuation``, text
in and out) and SPIN's y_gen ~ pi_opp(.|x) (``ResponseSampler``, token ids in and out, called by
the trainer at each step). Both go through ``sample_ids``: Hugging Face ``generate`` with the global
torch RNG forked and seeded around the call, so a sample depends only on its seed and neither
depends on nor disturbs the training run's random state.

SPIN's seed is derived from the run's seed, the trainer's global step and the example's position
in the batch, never from a counter: a run resumed from a checkpoint draws at step s exactly what
the uninterrupted run drew at step s, with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ldreg.dynamics.logprobs import EncodedPair


@dataclass(frozen=True)
class Sampling:
    """How to decode: greedy (``do_sample=False``) or plain sampling at ``temperature``/``top_p``."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


GREEDY = Sampling(do_sample=False)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_ids(model, prompt_ids: Sequence[int], max_new_tokens: int, seed: int, eos_token_id: int,
               pad_token_id: int | None = None, sampling: Sampling = Sampling()) -> list[int]:
    """The new token ids after ``prompt_ids`` (up to and including EOS if drawn), reproducible from ``seed``.

    The model is put in eval mode for the call and restored after.
    """
    device = next(model.parameters()).device
    inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    options = dict(max_new_tokens=max(1, int(max_new_tokens)), do_sample=sampling.do_sample,
                   pad_token_id=eos_token_id if pad_token_id is None else pad_token_id, eos_token_id=eos_token_id)
    if sampling.do_sample:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **options)
    finally:
        model.train(was_training)
    return out[0, inputs.shape[1]:].tolist()


def generate_continuation(model, tokenizer, prompt: str, max_new_tokens: int, seed: int,
                          sampling: Sampling = Sampling(), max_prompt_tokens: int = 256) -> str:
    """The decoded continuation of ``prompt`` (special tokens skipped), reproducible from ``seed``.

    The prompt keeps its END when it is too long (as the HH truncation rule does).
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    if not ids:
        ids = [tokenizer.eos_token_id]
    new = sample_ids(model, ids, max_new_tokens, seed, tokenizer.eos_token_id, tokenizer.pad_token_id, sampling)
    return tokenizer.decode(new, skip_special_tokens=True)


def step_seed(seed: int, step: int, index: int) -> int:
    """A seed for example ``index`` of the batch at global ``step`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class ResponseSampler:
    """SPIN's sampler: ``sampler(model, examples, step) -> [EncodedPair]``, one response per prompt.

    The opponent (the frozen reference) writes each response at ``temperature``, at most as many
    tokens as y+ has, ending with EOS (added when the budget runs out first).
    """

    def __init__(self, tokenizer, seed: int = 0, temperature: float = 1.0):
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.seed, self.sampling = seed, Sampling(True, temperature, 1.0)

    def __call__(self, model: torch.nn.Module, examples: Sequence, step: int) -> list[EncodedPair]:
        out = []
        for index, example in enumerate(examples):
            prompt = list(example.chosen.prompt_ids)
            budget = max(1, len(example.chosen.response_ids))
            response = sample_ids(model, prompt, budget, step_seed(self.seed, step, index), self.eos, self.pad,
                                  self.sampling)
            if not response or response[-1] != self.eos:
                response.append(self.eos)
            out.append(EncodedPair(tuple(prompt), tuple(response)))
        return out
