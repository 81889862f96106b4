"""Answers a finished run's model writes, for pairwise judging (``ldreg winrate``).

A run keeps no final weights (its checkpoint is discarded once the run completes), so the answers
are written at the end of training, by the final model, and stored as one observation of kind
``answers``: the first ``n`` prompts of the held-out split (by example id), each answered through
``ldreg.sampling`` (the one generation path) with a seed that depends only on the spec's seed and
the example's id. Two runs of the same data and split answer the same prompts, with the same
random draws when sampling. The pairs' own y+ and y- travel with the answers, so a judge can be
checked against the data set's preference without reloading the data.
"""

from __future__ import annotations

from typing import Sequence

from ldreg.observations import Observation
from ldreg.responses import PreferenceExample
from ldreg.sampling import GREEDY, Sampling, sample_ids, step_seed

KIND = "answers"


def chosen_prompts(examples: Sequence[PreferenceExample], n: int) -> list[PreferenceExample]:
    """The first ``n`` examples by id: the same prompts for every run of the same split."""
    return sorted(examples, key=lambda e: e.id)[:n]


def write_answers(model, tokenizer, examples: Sequence[PreferenceExample], *, n: int, max_new_tokens: int,
                  sampling: str, temperature: float, seed: int, max_prompt_tokens: int,
                  step: int, examples_seen: int, stage: str, stage_index: int, source: str) -> Observation:
    """One ``answers`` observation: per prompt the answer text and its length in tokens."""
    picked = chosen_prompts(examples, n)
    decode = GREEDY if sampling == "greedy" else Sampling(True, temperature, 1.0)
    eos = tokenizer.eos_token_id
    texts, lengths = [], []
    for example in picked:
        ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] or [eos]
        new = sample_ids(model, ids, max_new_tokens, step_seed(seed, 0, example.id), eos,
                         tokenizer.pad_token_id, decode)
        if new and new[-1] == eos:
            new = new[:-1]
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        lengths.append(float(len(new)))
    return Observation(
        kind=KIND, step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
        probe_set=source, response_type=sampling, example_ids=[e.id for e in picked],
        values={"length": lengths},
        meta={"texts": texts, "prompts": [e.prompt for e in picked], "chosen": [e.chosen for e in picked],
              "rejected": [e.rejected for e in picked], "max_new_tokens": max_new_tokens, "seed": seed,
              "temperature": temperature if sampling != "greedy" else None},
    )
