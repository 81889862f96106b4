"""Model and tokenizer loading: any HF causal LM by hub id or local path, and tiny ones made here.

Real use names a hub id (``EleutherAI/pythia-410m``), a local directory or a named model prepared
by ``ldreg.zoo``; all go through ``from_pretrained``. Tests and the offline demo build a small
GPT-NeoX (the Pythia architecture) or Llama (SmolLM2's) from config and train a byte-level BPE
tokenizer on local text, save both, and load them back through the very same ``from_pretrained``
path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
# The tiny Llama mimics SmolLM2's tokenizer: ChatML turn markers, the end of a turn is its EOS.
CHAT_SPECIAL_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "bos_token": "<|im_start|>"}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ARCHITECTURES = ("gpt_neox", "llama")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512,
                    special_tokens: dict[str, str] = SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` with ``tokenizers``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


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


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                      max_positions: int = 512, **overrides) -> LlamaConfig:
    """A SmolLM2-shaped config (grouped-query attention, tied embeddings, SwiGLU), tiny."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        intermediate_size=3 * hidden_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **overrides,
    )


def build_tiny_model(directory: str | Path, texts: Iterable[str], vocab_size: int = 512,
                     seed: int = 0, architecture: str = "gpt_neox", **config) -> Path:
    """Train a tokenizer on ``texts``, initialise a tiny GPT-NeoX or Llama, save both to ``directory``.

    The Llama gets a ChatML tokenizer with a chat template, like SmolLM2's, so the chat-template
    path and a per-tokenizer EOS are exercised without a real model.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    directory = Path(directory)
    llama = architecture == "llama"
    tokenizer = train_tokenizer(texts, vocab_size, CHAT_SPECIAL_TOKENS if llama else SPECIAL_TOKENS)
    if llama:
        tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    model_config = (tiny_llama_config if llama else tiny_neox_config)(len(tokenizer), **config)
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config.eos_token_id = tokenizer.eos_token_id
    model = (LlamaForCausalLM if llama else GPTNeoXForCausalLM)(model_config)
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
