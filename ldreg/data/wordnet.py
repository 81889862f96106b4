"""A reader for Debian's WordNet 3.0 database files, and a tiny built-in stand-in.

Synonyms and part-of-speech word lists for the rephrase generators, read straight from
``/usr/share/wordnet`` (package ``wordnet-base``): no nltk, no download. Only the ``index.*`` files
are parsed up front (lazily per part of speech, each line kept unparsed until asked); a synset is
read on demand by seeking to its byte offset in ``data.*``, which is how the format is meant to be
used, so loading takes a fraction of a second. Without the files, ``load_lexicon`` warns and returns
``MiniLexicon``, a few dozen hand-written synonym groups, so generators still run (and say so in
their provenance).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Protocol

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
ENV_WORDNET_DIR = "LDREG_WORDNET_DIR"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
POS_ORDER = ("n", "v", "a", "r")  # tie-break when a word is equally common in several


class Lexicon(Protocol):
    """What the rephrase generators need from a word database."""

    source: str

    def pos_of(self, lemma: str) -> str | None:
        """The most frequent part of speech of ``lemma`` (n, v, a, r), None if unknown."""

    def synonyms(self, lemma: str, pos: str, senses: int = 1) -> list[str]:
        """Other words of ``lemma``'s ``senses`` most frequent senses in ``pos`` (spaces in multi-words)."""

    def lemmas(self, pos: str) -> list[str]:
        """Common single-word lemmas of ``pos``, sorted (a stable pool to draw from)."""


class WordNet:
    """Debian's WordNet files, read lazily (index per POS on first use, synsets by offset)."""

    def __init__(self, root: str | Path = DEFAULT_WORDNET_DIR) -> None:
        self.root = Path(root)
        missing = [f"{kind}.{name}" for name in POS_FILES.values() for kind in ("index", "data")
                   if not (self.root / f"{kind}.{name}").is_file()]
        if missing:
            raise FileNotFoundError(f"WordNet files missing in {self.root}: {', '.join(missing)}")
        self.source = f"wordnet:{self.root}"
        self._index: dict[str, dict[str, str]] = {}
        self._synsets: dict[tuple[str, str], list[str]] = {}
        self._lemmas: dict[str, list[str]] = {}

    def _entries(self, pos: str) -> dict[str, str]:
        """lemma -> the rest of its index line (parsed only when the lemma is asked for)."""
        if pos not in self._index:
            entries: dict[str, str] = {}
            with open(self.root / f"index.{POS_FILES[pos]}", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("  "):  # the licence header
                        continue
                    lemma, _, rest = line.partition(" ")
                    entries[lemma] = rest
            self._index[pos] = entries
        return self._index[pos]

    def _parse(self, rest: str) -> tuple[int, list[str]]:
        """(tagged sense count, synset offsets by frequency) from an index line's tail."""
        parts = rest.split()
        synset_cnt, pointer_cnt = int(parts[1]), int(parts[2])
        tagsense_cnt = int(parts[4 + pointer_cnt])
        return tagsense_cnt, parts[-synset_cnt:]

    def _key(self, word: str) -> str:
        return word.lower().replace(" ", "_")

    def senses(self, lemma: str, pos: str) -> tuple[int, list[str]]:
        rest = self._entries(pos).get(self._key(lemma))
        return self._parse(rest) if rest is not None else (-1, [])

    def pos_of(self, lemma: str) -> str | None:
        best, best_count = None, -1
        for pos in POS_ORDER:
            count, offsets = self.senses(lemma, pos)
            if offsets and count > best_count:
                best, best_count = pos, count
        return best

    def synset_words(self, pos: str, offset: str) -> list[str]:
        key = (pos, offset)
        if key not in self._synsets:
            with open(self.root / f"data.{POS_FILES[pos]}", "rb") as f:
                f.seek(int(offset))
                fields = f.readline().decode("utf-8").split()
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(count)]
            self._synsets[key] = [w.split("(")[0].replace("_", " ") for w in words]  # "(a)" markers
        return self._synsets[key]

    def synonyms(self, lemma: str, pos: str, senses: int = 1) -> list[str]:
        _, offsets = self.senses(lemma, pos)
        own, found = lemma.lower(), []
        for offset in offsets[:senses]:
            found += [w for w in self.synset_words(pos, offset) if w.lower() != own and w not in found]
        return found

    def lemmas(self, pos: str) -> list[str]:
        """Single-word alphabetic lemmas seen in tagged text (tagsense_cnt > 0): common words."""
        if pos not in self._lemmas:
            self._lemmas[pos] = sorted(lemma for lemma, rest in self._entries(pos).items()
                                       if lemma.isalpha() and self._parse(rest)[0] > 0)
        return self._lemmas[pos]


# A stand-in for machines without wordnet-base: real synonym groups, a handful per part of speech.
MINI_GROUPS: dict[str, list[list[str]]] = {
    "n": [["car", "automobile", "auto"], ["house", "home", "dwelling"], ["child", "kid", "youngster"],
          ["job", "occupation", "employment"], ["idea", "notion", "thought"], ["money", "cash", "funds"],
          ["doctor", "physician", "medic"], ["food", "nourishment", "fare"], ["problem", "trouble", "issue"],
          ["trip", "journey", "voyage"], ["store", "shop"], ["friend", "companion", "pal"],
          ["answer", "reply", "response"], ["way", "method", "manner"], ["book", "volume"],
          ["picture", "image", "photo"], ["road", "route", "street"], ["water"], ["dog", "hound"],
          ["time", "period"], ["person", "individual", "someone"], ["question", "query", "inquiry"]],
    "v": [["help", "assist", "aid"], ["buy", "purchase"], ["begin", "start", "commence"],
          ["end", "finish", "conclude"], ["make", "create", "produce"], ["use", "employ", "utilize"],
          ["try", "attempt"], ["show", "demonstrate", "display"], ["need", "require"],
          ["think", "believe", "consider"], ["get", "obtain", "acquire"], ["give", "provide", "supply"],
          ["say", "state", "declare"], ["keep", "retain", "maintain"], ["choose", "pick", "select"],
          ["learn", "study"], ["eat", "consume"], ["talk", "speak", "converse"]],
    "a": [["big", "large", "huge"], ["small", "little", "tiny"], ["happy", "glad", "cheerful"],
          ["fast", "quick", "rapid"], ["easy", "simple", "effortless"], ["hard", "difficult", "tough"],
          ["good", "fine", "nice"], ["bad", "poor", "awful"], ["important", "significant", "crucial"],
          ["common", "usual", "typical"], ["safe", "secure"], ["old", "aged", "elderly"],
          ["new", "fresh", "novel"], ["smart", "clever", "bright"], ["sure", "certain"]],
    "r": [["quickly", "rapidly", "swiftly"], ["often", "frequently"], ["usually", "normally", "typically"],
          ["also", "additionally", "likewise"], ["really", "truly", "genuinely"], ["maybe", "perhaps"],
          ["probably", "likely"], ["easily", "effortlessly"], ["carefully", "cautiously"]],
}


class MiniLexicon:
    """The built-in stand-in: same interface as WordNet, a few hundred words."""

    source = "builtin-mini-lexicon"

    def __init__(self, groups: dict[str, list[list[str]]] = MINI_GROUPS) -> None:
        self._group_of: dict[str, dict[str, list[str]]] = {pos: {} for pos in POS_FILES}
        for pos, pos_groups in groups.items():
            for group in pos_groups:
                for word in group:
                    self._group_of[pos].setdefault(word, group)

    def pos_of(self, lemma: str) -> str | None:
        return next((pos for pos in POS_ORDER if lemma.lower() in self._group_of[pos]), None)

    def synonyms(self, lemma: str, pos: str, senses: int = 1) -> list[str]:
        own = lemma.lower()
        return [w for w in self._group_of[pos].get(own, []) if w != own]

    def lemmas(self, pos: str) -> list[str]:
        return sorted(self._group_of[pos])


def wordnet_dir() -> Path:
    return Path(os.environ.get(ENV_WORDNET_DIR) or DEFAULT_WORDNET_DIR)


@lru_cache(maxsize=4)
def _load(root: Path) -> Lexicon:
    try:
        return WordNet(root)
    except FileNotFoundError as exc:
        warnings.warn(f"{exc}; using ldreg's small built-in lexicon instead (install Debian's "
                      f"wordnet-base or set {ENV_WORDNET_DIR}) -- rephrases will vary less", stacklevel=3)
        return MiniLexicon()


def load_lexicon(root: str | Path | None = None) -> Lexicon:
    """WordNet from ``root`` (default $LDREG_WORDNET_DIR or /usr/share/wordnet), else MiniLexicon."""
    return _load(Path(root) if root is not None else wordnet_dir())
