"""Real English sentences for the "random sentence" response type.

The paper's y_rnd is a GPT-3.5 "random English sentence with as many words as y+". Offline, the
closest real thing is human-written text unrelated to the prompt: Debian's ``fortunes`` package
(about 15k quotations). Each fortune is cleaned (attribution lines, ASCII art and code dropped,
whitespace collapsed) and split into sentences, kept in file order so that consecutive sentences
read on. Without fortunes, the fallback is the passages shipped in ``resources/`` (the authors'
own GPT-3.5 random sentences from their probing data). Loading is cached per directory.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

DEFAULT_FORTUNES_DIR = Path("/usr/share/games/fortunes")
ENV_FORTUNES_DIR = "LDREG_FORTUNES_DIR"
FALLBACK_FILE = Path(__file__).with_name("resources") / "fallback_sentences.txt"
SKIP_FILES = {"ascii-art"}  # pictures, not sentences
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
MIN_WORDS = 3
MIN_LETTER_SHARE = 0.75  # of non-space characters: drops code, tables, art


@dataclass(frozen=True)
class Corpus:
    """Sentences in reading order, and where they came from."""

    sentences: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.sentences)


def _clean_fortune(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return " ".join(" ".join(lines).split())


def _is_prose(sentence: str) -> bool:
    chars = sentence.replace(" ", "")
    if len(sentence.split()) < MIN_WORDS or not chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    return letters / len(chars) >= MIN_LETTER_SHARE


def split_sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text) if _is_prose(s)]


def read_fortunes(directory: str | Path) -> list[str]:
    """Every prose sentence of the fortune files in ``directory`` (files sorted by name)."""
    sentences: list[str] = []
    for path in sorted(Path(directory).iterdir()):
        if not path.is_file() or path.is_symlink() or path.suffix or path.name in SKIP_FILES:
            continue  # .dat indexes, .u8 links
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            sentences += split_sentences(_clean_fortune(fortune))
    return sentences


def read_passages(path: str | Path) -> list[str]:
    """Sentences of a text file of one passage per line ('#' lines are comments)."""
    sentences: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            sentences += split_sentences(" ".join(line.split()))
    return sentences


def fortunes_dir() -> Path:
    return Path(os.environ.get(ENV_FORTUNES_DIR) or DEFAULT_FORTUNES_DIR)


@lru_cache(maxsize=4)
def _load(directory: Path, fallback: Path) -> Corpus:
    if directory.is_dir():
        sentences = read_fortunes(directory)
        if sentences:
            return Corpus(tuple(sentences), f"fortunes:{directory}")
    warnings.warn(f"no fortunes in {directory}; random sentences come from ldreg's fallback text "
                  f"{fallback.name} (install Debian's fortunes or set {ENV_FORTUNES_DIR})", stacklevel=3)
    return Corpus(tuple(read_passages(fallback)), f"fallback:{fallback.name}")


def load_corpus(directory: str | Path | None = None, fallback: str | Path = FALLBACK_FILE) -> Corpus:
    """Fortunes from ``directory`` (default $LDREG_FORTUNES_DIR or Debian's), else the fallback text."""
    return _load(Path(directory) if directory is not None else fortunes_dir(), Path(fallback))


def random_words(sentences: Sequence[str], n_words: int, rng: random.Random) -> str:
    """Exactly ``n_words`` words of running text, from a random sentence onward (wrapping round)."""
    if n_words <= 0:
        return ""
    if not sentences:
        raise ValueError("no sentences to draw from")
    start = rng.randrange(len(sentences))
    words: list[str] = []
    for step in range(len(sentences) + 1):
        words += sentences[(start + step) % len(sentences)].split()
        if len(words) >= n_words:
            return " ".join(words[:n_words])
    while len(words) < n_words:  # a corpus shorter than the request: repeat it
        words += words
    return " ".join(words[:n_words])
