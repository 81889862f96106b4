"""Model and tokenizer loading: any HF causal LM by hub id or local path, and tiny ones made here.

Real use names a hub id (``EleutherAI/pythia-410m``) or a local directory; both go through
``from_pretrained``. Tests and the offline demo build a small GPT-NeoX (the Pythia
architecture) from config and train a byte-level BPE tokenizer on local text, save both, and
load them back through the very same ``from_pretrained`` path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` with ``tokenizers``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tiny_neox_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                     max_positions: int = 512, **overrides) -> GPTNeoXConfig:
    """A Pythia-shaped config small enough to train on a laptop CPU in seconds."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        **overrides,
    )


def build_tiny_model(directory: str | Path, texts: Iterable[str], vocab_size: int = 512,
                     seed: int = 0, **config) -> Path:
    """Train a tokenizer on ``texts``, initialise a tiny GPT-NeoX, save both to ``directory``."""
    directory = Path(directory)
    tokenizer = train_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    model_config = tiny_neox_config(len(tokenizer), **config)
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config.eos_token_id = tokenizer.eos_token_id
    model = GPTNeoXForCausalLM(model_config)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def load_tokenizer(name_or_path: str | Path):
    """A tokenizer with a pad token (causal LMs often ship none; we pad with EOS then)."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | Path, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32):
    """Any causal LM by hub id or local path, on ``device`` in ``dtype``."""
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    return model.to(device)


def frozen_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A reference model: a deep copy in eval mode with gradients off (optionally cast)."""
    ref = copy.deepcopy(model)
    if dtype is not None:
        ref = ref.to(dtype)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
