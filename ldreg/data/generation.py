"""Seeded text generation from a causal LM, for responses a model writes (y0, self-rephrases).

One call, one seed: the global torch RNG is forked around ``generate`` so that drawing a probe
response neither depends on nor disturbs the training run's random state. The prompt keeps its
END when it is too long (as the HH truncation rule does), and the model is put in eval mode for the
call and restored after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How to decode: greedy (``do_sample=False``) or plain sampling at ``temperature``/``top_p``."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


GREEDY = Sampling(do_sample=False)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate_continuation(model, tokenizer, prompt: str, max_new_tokens: int, seed: int,
                          sampling: Sampling = Sampling(), max_prompt_tokens: int = 256) -> str:
    """The decoded continuation of ``prompt`` (special tokens skipped), reproducible from ``seed``."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    if not ids:
        ids = [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = dict(max_new_tokens=max(1, int(max_new_tokens)), do_sample=sampling.do_sample,
                   pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
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
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
