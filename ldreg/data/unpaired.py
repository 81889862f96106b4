"""Unpaired preference data (TRL's prompt/completion/label rows): what a run trains on and probes.

KTO and BCO need no pairs: each row is one example, its completion labelled desirable or not.
The adapter keeps such a row as a ``PreferenceExample`` with the completion in ``chosen``, an
empty ``rejected`` and ``extras["label"]``; the engine trains on it as one sequence with its
label (``SequenceLogps.desirable``).

The probes, though, observe y+ and y- of one prompt (and their rephrases), so an unpaired run
probes the pairs its data contains: for each prompt of the split that has both a desirable and an
undesirable completion, its first desirable completion as y+ and its first undesirable one as
y-, under the desirable row's id. Data unpaired from pairs (TRL's ``maybe_unpair_preference_
dataset``) gives one per pair. A split with no such prompt cannot be probed from itself: the run
stops before training and says to give the probing set as a file.
"""

from __future__ import annotations

from typing import Sequence

from ldreg.data.errors import DataError
from ldreg.errors import SpecError
from ldreg.responses import PreferenceExample


def is_unpaired(example: PreferenceExample) -> bool:
    """Whether ``example`` is an unpaired row (a completion and its label), not a pair."""
    return "label" in example.extras


def unpaired_count(examples: Sequence[PreferenceExample]) -> int:
    return sum(is_unpaired(e) for e in examples)


def refuse_pair_losses(spec, plugins) -> None:
    """Unpaired data trains only losses that declare ``accepts_unpaired``: a SpecError naming the
    stage otherwise, at ``--dry-run`` and before a run builds any model."""
    for i, stage in enumerate(spec.stages):
        if not plugins.losses.get(stage.loss).accepts_unpaired:
            takers = sorted(n for n in plugins.losses.names() if plugins.losses.get(n).accepts_unpaired)
            raise SpecError(f"stages[{i}].loss: {stage.loss!r} needs (y+, y-) pairs, but data.source {spec.data.source!r} "
                            f"is unpaired (prompt/completion/label rows); use {' or '.join(takers)}, or paired data")


def probe_pairs(examples: Sequence[PreferenceExample], split: str = "train",
                required: bool = True) -> list[PreferenceExample]:
    """The pairs an unpaired split holds (see the module docstring), in the split's order; a split
    of pairs is returned as it is. ``required``: none is a DataError (a probing set draws on it)."""
    if not unpaired_count(examples):
        return list(examples)
    desirable: dict[str, PreferenceExample] = {}
    undesirable: dict[str, PreferenceExample] = {}
    for e in examples:
        (desirable if e.extras["label"] else undesirable).setdefault(e.prompt, e)
    pairs = [PreferenceExample(good.id, good.prompt, good.chosen, undesirable[prompt].chosen,
                               {"paired_from": [good.id, undesirable[prompt].id]})
             for prompt, good in desirable.items() if prompt in undesirable]
    if not pairs and required:
        raise DataError(f"the {split} split of this unpaired data has no prompt with both a desirable and an "
                        f"undesirable completion, so it has no (y+, y-) pairs to probe; add such rows, or give "
                        f"probing.sets[].source as a saved probing set file")
    pairs.sort(key=lambda e: e.id)
    return pairs
