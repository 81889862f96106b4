"""A preference dataset built from real text: keyword prompts answered by two real fortunes.

Offline there is no human-labelled preference data to finetune a model pretrained here, so the
pairs are built from Debian's fortunes with a *systematic* reason to prefer y+:

- the prompt is "Tell me something about {keyword}.";
- y+ is a sentence containing the keyword from the *quotation* files (wisdom, literature,
  people, art, ...): one coherent register, the "helpful answer" style SFT is meant to teach;
- y- is a different sentence containing the same keyword from the *jokes and jargon* files
  (computers, linux, definitions, zippy, ...), with a similar number of words.

y+ and y- thus share the prompt's topic (so learning y+ first pulls y- up too, as similar
responses are in the paper) but differ in register (so specialising on y+ then pushes y- down).
Everything is deterministic given the seed; the file is written once under ``cache_dir()``.

A spec names a dataset as ``data: {source: "generated:NAME"}``; ``resolve_source`` turns that
into the path of the built file (building it on first use) and passes any other source through.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from ldreg import config
from ldreg.data.corpus import _clean_fortune, fortunes_dir, split_sentences
from ldreg.errors import SpecError

PREFIX = "generated:"
PROMPT = "Tell me something about {keyword}."
PREFERRED_FILES = ("wisdom", "literature", "people", "art", "love", "education", "tao", "men-women",
                   "politics", "platitudes", "law", "medicine", "sports", "food", "kids", "pets", "humorists")
REJECTED_FILES = ("computers", "linux", "definitions", "zippy", "cookie", "startrek", "science",
                  "knghtbrd", "perl", "debian", "linuxcookie", "riddles", "miscellaneous", "work", "fortunes")
WORD = re.compile(r"[a-z]+")
STOPWORDS = frozenset("""
about above after again against also always among another anything around because been before being
below between both cannot could does doing down during each even ever every from further have having
here hers herself himself into itself just least less like made make many might more most much must
myself never none only other ought ours over same shall should some such than that their theirs them
then there these they thing things this those through thus under until upon very want well were what
when where which while whom whose will with within without would your yours yourself said says
""".split())


@dataclass(frozen=True)
class PrefsRecipe:
    """How many pairs, from which files, of what length, with which seed."""

    version: int = 2  # bumped when the builder changes, so cached files are rebuilt
    n_pairs: int = 1000
    min_words: int = 6
    max_words: int = 24
    max_length_ratio: float = 1.5  # y- has at most this many times (and at least 1/this) y+'s words
    max_pairs_per_keyword: int = 3
    seed: int = 0


DATASETS: dict[str, PrefsRecipe] = {
    "fortune-prefs": PrefsRecipe(),
    "fortune-prefs-quick": PrefsRecipe(n_pairs=320),
}


def _file_sentences(directory: Path, names: tuple[str, ...]) -> list[str]:
    sentences: list[str] = []
    for name in names:
        path = directory / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            for fortune in text.split("\n%\n"):
                sentences += split_sentences(_clean_fortune(fortune))
    return sentences


def keywords(sentence: str) -> set[str]:
    """The sentence's content words: lower-case, alphabetic, 4+ letters, not a stop word."""
    return {w for w in WORD.findall(sentence.lower()) if len(w) >= 4 and w not in STOPWORDS}


def _index(sentences: list[str], recipe: PrefsRecipe) -> dict[str, list[int]]:
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sentences):
        if recipe.min_words <= len(s.split()) <= recipe.max_words:
            for w in sorted(keywords(s)):
                index[w].append(i)
    return index


def build_pairs(preferred: list[str], rejected: list[str], recipe: PrefsRecipe) -> list[dict]:
    """``n_pairs`` rows {prompt, chosen, rejected, keyword}; no sentence used twice or on both sides."""
    rng = random.Random(recipe.seed)
    in_both = set(preferred) & set(rejected)  # some quotations are filed twice (e.g. cookie, wisdom)
    rejected = [s for s in rejected if s not in in_both]
    good, bad = _index(preferred, recipe), _index(rejected, recipe)
    shared = sorted(set(good) & set(bad))
    rng.shuffle(shared)
    used_good, used_bad, rows = set(), set(), []
    for _ in range(recipe.max_pairs_per_keyword):  # round-robin: as many distinct keywords as possible
        for word in shared:
            if len(rows) == recipe.n_pairs:
                break
            g = [i for i in good[word] if i not in used_good]
            if not g:
                continue
            i = rng.choice(g)
            n = len(preferred[i].split())
            b = [j for j in bad[word] if j not in used_bad
                 and 1 / recipe.max_length_ratio <= len(rejected[j].split()) / n <= recipe.max_length_ratio]
            if not b:
                continue
            j = rng.choice(b)
            used_good.add(i)
            used_bad.add(j)
            rows.append({"prompt": PROMPT.format(keyword=word), "chosen": " " + preferred[i],
                         "rejected": " " + rejected[j], "keyword": word})
    if len(rows) < recipe.n_pairs:
        raise SpecError(f"data.source: only {len(rows)} keyword pairs could be built from the fortunes "
                        f"(asked for {recipe.n_pairs}); lower n_pairs or install Debian's fortunes")
    rng.shuffle(rows)
    return rows


def recipe(name: str) -> PrefsRecipe:
    try:
        return DATASETS[name]
    except KeyError:
        raise SpecError(f"data.source: no generated dataset {name!r}; known: "
                        f"{', '.join(PREFIX + n for n in DATASETS)}") from None


def dataset_path(name: str) -> Path:
    """The JSON-lines file of generated dataset ``name``, built on first use."""
    r = recipe(name)
    path = config.cache_dir() / "datasets" / f"{name}.jsonl"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("recipe") == asdict(r):
        return path
    directory = fortunes_dir()
    if not directory.is_dir():
        raise SpecError(f"data.source: {PREFIX}{name} is built from Debian's fortunes, not found in {directory} "
                        f"(apt install fortunes, or set LDREG_FORTUNES_DIR)")
    rows = build_pairs(_file_sentences(directory, PREFERRED_FILES), _file_sentences(directory, REJECTED_FILES), r)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.rename(path)
    meta.write_text(json.dumps({"recipe": asdict(r), "fortunes": str(directory), "pairs": len(rows),
                                "keywords": len({row["keyword"] for row in rows})}, indent=2))
    return path


def resolve_source(source: str) -> str:
    """``generated:NAME`` -> the built file's path; any other data source unchanged."""
    if source.startswith(PREFIX):
        return str(dataset_path(source[len(PREFIX):]))
    return source
