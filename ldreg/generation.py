"""Sampling responses from a model: SPIN's y_gen ~ pi_opp(.|x), done by the engine, not the loss.

The opponent is the model at the start of the stage (the frozen reference). Samples are seeded,
so a SPIN run is as reproducible as any other.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ldreg.backends import Backend
from ldreg.dynamics.logprobs import EncodedPair


class ResponseSampler:
    """``sampler(model, examples) -> [EncodedPair]``: one sampled response per example's prompt."""

    def __init__(self, tokenizer, backend: Backend, seed: int = 0, temperature: float = 1.0):
        self.tokenizer, self.backend, self.seed, self.temperature = tokenizer, backend, seed, temperature
        self.calls = 0

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, examples: Sequence) -> list[EncodedPair]:
        was_training = model.training
        model.eval()
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 7919 + self.calls)
        self.calls += 1
        eos = self.tokenizer.eos_token_id
        out = []
        try:
            for example in examples:
                prompt = list(example.chosen.prompt_ids)
                budget = max(1, len(example.chosen.response_ids))
                ids = torch.tensor([prompt], device=self.backend.device())
                response: list[int] = []
                past = None
                for _ in range(budget):
                    result = model(input_ids=ids, past_key_values=past, use_cache=True)
                    past = result.past_key_values
                    probs = torch.softmax(result.logits[0, -1].float() / self.temperature, -1).cpu()
                    token = int(torch.multinomial(probs, 1, generator=gen))
                    response.append(token)
                    if token == eos:
                        break
                    ids = torch.tensor([[token]], device=self.backend.device())
                if response[-1] != eos:
                    response.append(eos)
                out.append(EncodedPair(tuple(prompt), tuple(response)))
        finally:
            model.train(was_training)
        return out
