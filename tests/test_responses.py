"""Every built-in response-type generator: deterministic, seed-sensitive, and what it claims to be."""

from __future__ import annotations

import re
import warnings
from collections import Counter

import pytest

from ldreg.data.corpus import load_corpus, random_words
from ldreg.data.errors import DataError
from ldreg.data.rephrase import WORD, analyse, format_rephrase, inflect, semantic_rephrase
from ldreg.data.wordnet import MiniLexicon, WordNet, load_lexicon
from ldreg.registry import get_plugins
from ldreg.responses import GenerationContext, PreferenceExample

OFFLINE_TYPES = ["chosen", "rejected", "chosen_rephrase_semantic", "rejected_rephrase_semantic",
                 "chosen_rephrase_format", "rejected_rephrase_format", "irrelevant_train", "irrelevant_test",
                 "random_sentence", "chosen_permuted", "random_permuted"]
MODEL_TYPES = ["initial", "chosen_selfr", "rejected_selfr"]


@pytest.fixture(scope="module")
def examples(authors_records):
    return [PreferenceExample(i, r["prompt"], r["chosen"], r["rejected"]) for i, r in enumerate(authors_records[:40])]


@pytest.fixture(scope="module")
def ctx(examples):
    return GenerationContext(seed=7, train_pool=examples[:30], test_pool=examples[30:])


def registry():
    return get_plugins().responses


def test_every_paper_type_is_registered():
    assert set(OFFLINE_TYPES + MODEL_TYPES + ["model_rephrase"]) <= set(registry().names())
    assert all(registry().get(t).needs_model for t in MODEL_TYPES)


@pytest.mark.parametrize("kind", OFFLINE_TYPES)
def test_offline_generators_are_deterministic_and_seeded(kind, examples, ctx):
    gen = registry().get(kind)
    first = [gen.generate(e, ctx) for e in examples[:10]]
    assert first == [gen.generate(e, ctx) for e in examples[:10]]
    other = GenerationContext(seed=8, train_pool=ctx.train_pool, test_pool=ctx.test_pool)
    changed = [gen.generate(e, other) for e in examples[:10]]
    if kind in ("chosen", "rejected"):
        assert first == changed == [getattr(e, kind) for e in examples[:10]]
    else:
        assert first != changed


def test_permutations_are_permutations(examples, ctx):
    for e in examples[:10]:
        permuted = registry().get("chosen_permuted").generate(e, ctx)
        assert Counter(permuted.split()) == Counter(e.chosen.split())
        sentence = registry().get("random_sentence").generate(e, ctx)
        assert Counter(registry().get("random_permuted").generate(e, ctx).split()) == Counter(sentence.split())


def test_random_sentence_has_as_many_words_as_chosen(examples, ctx):
    for e in examples:
        text = registry().get("random_sentence").generate(e, ctx)
        assert len(text.split()) == len(e.chosen.split())
        assert text[:1].isspace() == e.chosen[:1].isspace()
        assert text.strip() not in e.chosen


def test_random_words_by_hand():
    import random

    sentences = ["one two three.", "four five.", "six seven eight nine."]
    out = random_words(sentences, 4, random.Random(0))
    assert len(out.split()) == 4 and out in " ".join(sentences * 2)
    assert random_words(sentences, 0, random.Random(0)) == ""


def test_irrelevant_responses_come_from_other_prompts(examples, ctx):
    for e in examples[:30]:
        other = registry().get("irrelevant_train").generate(e, ctx)
        assert other in [x.chosen for x in ctx.train_pool if x.id != e.id]
        assert registry().get("irrelevant_test").generate(e, ctx) in [x.chosen for x in ctx.test_pool]


def test_irrelevant_without_a_pool_says_what_to_load(examples):
    with pytest.raises(DataError, match="test_pool"):
        registry().get("irrelevant_test").generate(examples[0], GenerationContext())
    lonely = GenerationContext(train_pool=[examples[0]])
    with pytest.raises(DataError, match="train_pool"):
        registry().get("irrelevant_train").generate(examples[0], lonely)


# --- WordNet rephrases ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wordnet():
    return WordNet()


def test_wordnet_reader_finds_real_synonyms(wordnet):
    assert wordnet.pos_of("dog") == "n" and wordnet.pos_of("quickly") == "r"
    assert "shop" in wordnet.synonyms("store", "n")
    assert "domestic dog" in wordnet.synonyms("dog", "n")
    assert wordnet.pos_of("xyzzyq") is None
    assert "dog" in wordnet.lemmas("n") and "run" in wordnet.lemmas("v")


def test_semantic_rephrase_uses_real_synonyms(examples, wordnet, ctx):
    swapped = 0
    for e in examples[:10]:
        import random

        text, swaps = semantic_rephrase(e.chosen, wordnet, random.Random(1))
        for s in swaps:
            lemma = analyse(s.before, wordnet)
            synonyms = {w.lower() for w in wordnet.synonyms(lemma.lemma, lemma.pos)}
            assert s.after.lower() in {inflect(w, lemma.suffix) for w in synonyms}, s
        swapped += len(swaps)
        out = registry().get("chosen_rephrase_semantic").generate(e, ctx)
        assert out.startswith(" ")  # leading space of y+ kept
    assert swapped > 5


def test_format_rephrase_keeps_word_count_and_pos(examples, wordnet):
    import random

    total = 0
    for e in examples[:10]:
        text, swaps = format_rephrase(e.rejected, wordnet, random.Random(2))
        assert len(WORD.findall(text)) == len(WORD.findall(e.rejected))
        assert re.sub(r"[A-Za-z'’]+", "w", text) == re.sub(r"[A-Za-z'’]+", "w", e.rejected)  # punctuation kept
        for s in swaps:
            assert analyse(s.before, wordnet).pos == s.pos
            assert s.after.lower() != s.before.lower()
        total += len(swaps)
    assert total > 20


def test_inflections_are_redone():
    assert inflect("city", "s") == "cities" and inflect("box", "es") == "boxes"
    assert inflect("bake", "ing") == "baking" and inflect("jump", "ed") == "jumped"


def test_fallbacks_without_debian_files(tmp_path, examples):
    """No WordNet / no fortunes: a warning, a small built-in lexicon, the shipped sentences."""
    with pytest.warns(UserWarning, match="built-in lexicon"):
        lexicon = load_lexicon(tmp_path / "no-wordnet")
    assert isinstance(lexicon, MiniLexicon)
    assert lexicon.synonyms("buy", "v") == ["purchase"]
    with pytest.warns(UserWarning, match="fallback"):
        corpus = load_corpus(tmp_path / "no-fortunes")
    assert corpus.source.startswith("fallback") and len(corpus) > 100
    ctx = GenerationContext(seed=3, options={"wordnet_dir": str(tmp_path / "no-wordnet"),
                                             "fortunes_dir": str(tmp_path / "no-fortunes")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = examples[2]
        text = registry().get("random_sentence").generate(e, ctx)
        assert len(text.split()) == len(e.chosen.split())
        assert " ".join(text.split()[:3]) in " ".join(corpus.sentences)
        assert registry().get("chosen_rephrase_format").generate(e, ctx) != e.chosen


def test_fortunes_corpus_is_real_prose():
    corpus = load_corpus()
    assert corpus.source.startswith("fortunes") and len(corpus) > 10_000
    assert all(len(s.split()) >= 3 for s in corpus.sentences[:500])


# --- model-written responses --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ldreg.models import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_model_types_need_a_model(examples):
    for kind in MODEL_TYPES:
        with pytest.raises(DataError, match="needs a model"):
            registry().get(kind).generate(examples[0], GenerationContext())
    with pytest.raises(DataError, match="rephrase_model"):
        registry().get("model_rephrase").generate(examples[0], GenerationContext())


def test_initial_is_seeded_and_leaves_the_global_rng_alone(tiny, examples):
    import torch

    model, tok = tiny
    ctx = GenerationContext(seed=1, model=model, tokenizer=tok, options={"max_new_tokens": 6})
    gen = registry().get("initial")
    state = torch.random.get_rng_state()
    first = [gen.generate(e, ctx) for e in examples[:2]]
    assert torch.equal(state, torch.random.get_rng_state())  # the training RNG is left alone
    assert first == [gen.generate(e, ctx) for e in examples[:2]]
    reseeded = GenerationContext(seed=2, model=model, tokenizer=tok, options={"max_new_tokens": 6})
    assert first != [gen.generate(e, reseeded) for e in examples[:2]]


def test_generation_budget_is_in_tokens(tiny, examples):
    from ldreg.sampling import GREEDY, generate_continuation

    model, tok = tiny
    short = generate_continuation(model, tok, examples[0].prompt, 3, seed=0, sampling=GREEDY)
    longer = generate_continuation(model, tok, examples[0].prompt, 6, seed=0, sampling=GREEDY)
    assert longer.startswith(short) and len(longer) > len(short)


def test_self_rephrase_uses_the_authors_template(tiny, examples, authors_records):
    from ldreg_plugins.responses.model import SELF_REPHRASE_TEMPLATE, cut_rephrase

    echoed = [r for r in authors_records if r["chosen_selfr"].startswith("Please rephrase")]
    assert len(echoed) == 5  # the authors' raw records that kept their prompt
    assert all(r["chosen_selfr"].startswith(SELF_REPHRASE_TEMPLATE.format(response=r["chosen"])) for r in echoed)
    assert cut_rephrase(" Sure thing.\n@@@ Original Sentence: more", " x") == " Sure thing."
    model, tok = tiny
    ctx = GenerationContext(seed=1, model=model, tokenizer=tok, options={"selfr_raw": True, "max_new_tokens": 6})
    gen = registry().get("chosen_selfr")
    assert gen.generate(examples[0], ctx) == gen.generate(examples[0], ctx)


def test_model_rephrase_loads_a_local_model_and_is_deterministic(tiny_model_dir, examples):
    ctx = GenerationContext(seed=0, options={"rephrase_model": str(tiny_model_dir), "selfr_raw": True,
                                             "max_new_tokens": 6})
    gen = registry().get("model_rephrase")
    outputs = [gen.generate(e, ctx) for e in examples[:2]]
    assert outputs == [gen.generate(e, ctx) for e in examples[:2]]
    assert all(isinstance(o, str) and o for o in outputs)
    with pytest.raises(DataError, match="cannot be loaded"):
        gen.generate(examples[0], GenerationContext(options={"rephrase_model": "/nonexistent/model"}))
