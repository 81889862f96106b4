"""A seed is a replication: it draws its own train/test split and its own probe examples."""

from ldreg.responses import PreferenceExample
from ldreg.runner import probe_sample, split_train_test


def _examples(n: int) -> list[PreferenceExample]:
    return [PreferenceExample(id=i, prompt=f"p{i}", chosen=f"c{i}", rejected=f"r{i}") for i in range(n)]


def test_split_varies_with_the_seed_and_never_overlaps():
    data = _examples(100)
    splits = {seed: split_train_test(data, 0.1, seed) for seed in (0, 1, 2)}
    for train, test in splits.values():
        assert len(test) == 10 and len(train) == 90
        assert not {e.id for e in train} & {e.id for e in test}
        assert [e.id for e in test] == sorted(e.id for e in test)  # the file's order is kept
    assert len({tuple(e.id for e in test) for _, test in splits.values()}) == 3
    assert split_train_test(data, 0.1, 1) == splits[1]  # the same seed, the same split
    assert [e.id for e in split_train_test(data, 0.1, None)[1]] == list(range(90, 100))  # no seed: the last tenth


def test_probe_sample_varies_with_the_seed():
    train = _examples(50)
    a, b = probe_sample(train, 8, 1), probe_sample(train, 8, 2)
    assert len(a) == len(b) == 8 and [e.id for e in a] != [e.id for e in b]
    assert probe_sample(train, 8, 1) == a and [e.id for e in probe_sample(train, 8, None)] == list(range(8))
    assert len(probe_sample(train, 80, 1)) == 50


def test_a_pretrained_base_per_seed_is_a_named_preset():
    from ldreg.paper.pretrain import PRESETS, preset

    assert preset("fortunes-micro-seed3").seed == 3
    assert preset("fortunes-micro-seed3").steps == PRESETS["fortunes-micro"].steps
    assert preset("fortunes-micro").seed == 0
