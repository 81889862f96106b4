"""A small base model pretrained here, from scratch, on real English (Debian's fortunes).

The paper finetunes *pretrained* models: their distribution is already peaked, which is what makes
the squeezing effect and the rise-then-fall of similar responses visible. A randomly initialised
tiny model is flat, so it shows neither. Offline, the closest thing to a pretrained LM is one we
pretrain ourselves: a byte-level BPE and a GPT-NeoX (the Pythia architecture) trained with plain
next-token prediction on the fortunes corpus (about 2.8 MB of quotations, ldreg.data.corpus).

A preset names the recipe. The first ``pretrained_path(NAME)`` trains it and saves it under
``cache_dir()/pretrained/NAME`` (model, tokenizer, and ``pretrain.json`` recording what was done);
later calls reuse it. Given the preset (and its seed) the result is the same on every run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from ldreg import config
from ldreg.errors import SpecError

RECORD_FILE = "pretrain.json"


@dataclass(frozen=True)
class Preset:
    """One pretraining recipe: model shape, tokenizer size, how much text, how long."""

    hidden_size: int
    layers: int
    heads: int
    vocab_size: int
    steps: int
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    max_chars: int | None = None  # None: the whole corpus
    seed: int = 0
    description: str = ""

    @property
    def tokens(self) -> int:
        return self.steps * self.seq_len * self.batch_size


PRESETS: dict[str, Preset] = {
    # about 1.3M parameters, 2M tokens (about 2.5 passes over fortunes); minutes on 2 CPU cores
    "fortunes-small": Preset(hidden_size=128, layers=4, heads=4, vocab_size=2048, steps=1000,
                             description="the default base model of the LLM pipelines"),
    # well under a minute: the --quick demo and integration tests
    "fortunes-tiny": Preset(hidden_size=64, layers=2, heads=4, vocab_size=1024, steps=200, seq_len=64,
                            description="the --quick demo's base model"),
    # seconds: unit tests of this module
    "fortunes-micro": Preset(hidden_size=32, layers=1, heads=2, vocab_size=320, steps=30, seq_len=32,
                             batch_size=8, warmup=5, max_chars=200_000, description="unit tests"),
}


def preset(name: str) -> Preset:
    """A preset by name; ``NAME-seedN`` is preset NAME initialised and sampled with seed N (a replication)."""
    stem, _, seed = name.rpartition("-seed")
    if stem in PRESETS and seed.isdigit():
        return replace(PRESETS[stem], seed=int(seed))
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"model.base: no pretrained preset {name!r}; known: {', '.join(PRESETS)} "
                        f"(write e.g. pretrained:fortunes-small)") from None


def corpus_texts(max_chars: int | None = None) -> list[str]:
    """The fortunes corpus as sentences in reading order, cut after ``max_chars`` characters."""
    from ldreg.data.corpus import load_corpus

    texts, total = [], 0
    for sentence in load_corpus().sentences:
        if max_chars is not None and total >= max_chars:
            break
        texts.append(sentence)
        total += len(sentence) + 1
    return texts


def token_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Every sentence tokenised, each followed by EOS, as one long stream (GPT-style packing)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids += encoded + [eos]
    return torch.tensor(ids, dtype=torch.long)


def _lr_factor(step: int, p: Preset) -> float:
    """Linear warm-up, then cosine decay to a tenth: the usual LM pretraining schedule."""
    if step < p.warmup:
        return (step + 1) / p.warmup
    progress = (step - p.warmup) / max(1, p.steps - p.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(p: Preset, directory: Path, progress: bool = False) -> dict:
    """Tokenizer, model, pretraining loop; saves everything to ``directory``; returns the record."""
    from tqdm.auto import tqdm
    from transformers import GPTNeoXForCausalLM

    from ldreg.models import tiny_neox_config, train_tokenizer

    start = time.perf_counter()
    texts = corpus_texts(p.max_chars)
    tokenizer = train_tokenizer(texts, p.vocab_size)
    stream = token_stream(tokenizer, texts)
    torch.manual_seed(p.seed)
    cfg = tiny_neox_config(len(tokenizer), hidden_size=p.hidden_size, layers=p.layers, heads=p.heads,
                           max_positions=512)
    cfg.pad_token_id, cfg.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = GPTNeoXForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, p))
    gen = torch.Generator().manual_seed(p.seed)
    n_windows = len(stream) - p.seq_len
    losses: list[float] = []
    model.train()
    bar = tqdm(range(p.steps), desc="pretraining", unit="step", disable=not progress, leave=False)
    for _ in bar:
        starts = torch.randint(0, n_windows, (p.batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + p.seq_len] for s in starts.tolist()])
        out = model(input_ids=batch, labels=batch)  # the model shifts labels itself
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(out.loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    tail = losses[-max(1, len(losses) // 20):]
    record = {"preset": asdict(p), "parameters": sum(t.numel() for t in model.parameters()),
              "corpus_sentences": len(texts), "corpus_tokens": len(stream), "tokens_trained": p.tokens,
              "steps": p.steps, "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
              "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads()}
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return record


def pretrained_dir(name: str) -> Path:
    return config.cache_dir() / "pretrained" / name


def pretrained_path(name: str, progress: bool = True) -> Path:
    """The directory of preset ``name``, pretraining it first if it is not cached yet."""
    p = preset(name)
    directory = pretrained_dir(name)
    record = directory / RECORD_FILE
    if record.exists() and json.loads(record.read_text()).get("preset") == asdict(p):
        return directory
    staging = directory.with_name(f".{name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    train(p, staging, progress=progress)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)  # a half-built model is never mistaken for a finished one
    return directory


def pretrain(name: str, progress: bool = True) -> Path:
    """The CLI's entry: build (or find) preset ``name`` and return its directory."""
    return pretrained_path(name, progress=progress)


def read_record(name: str) -> dict:
    return json.loads((pretrained_dir(name) / RECORD_FILE).read_text())


__all__ = ["PRESETS", "Preset", "preset", "pretrain", "pretrained_path", "read_record", "train"]
