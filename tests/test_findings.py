"""Findings are computed from probe means; hand-built curves give known verdicts and numbers."""

import pandas as pd
import pytest

from ldreg import findings as F
from ldreg.observations import Observation
from ldreg.store.sink import StoreSink


def _frame(curves: dict[tuple[int, int, str], list[float]], every: int = 10) -> pd.DataFrame:
    rows = []
    for (run, stage, rtype), values in curves.items():
        for i, v in enumerate(values):
            rows.append({"run_id": run, "stage": str(stage), "stage_index": stage, "step": i,
                         "examples_seen": stage * 1000 + i * every, "response_type": rtype, "mean": v})
    return pd.DataFrame(rows)


def test_sft_findings_on_hand_built_curves():
    frame = _frame({
        (1, 0, "chosen"): [-100, -90, -80],
        (1, 0, "rejected"): [-100, -98, -105],           # rises then falls
        (1, 0, "chosen_rephrase_semantic"): [-90, -95, -99],  # only falls
        (1, 0, "chosen_permuted"): [-120, -125, -130],
        (1, 0, "irrelevant_train"): [-100, -97, -95],    # rises by 5 < 20
    })
    assert F.sft_raises_chosen(frame, 1).held and F.sft_raises_chosen(frame, 1).numbers["end"] == -80
    rf = F.rise_then_fall(frame, 1)
    assert rf.numbers["rejected"]["peak"] == -98 and rf.numbers["rejected"]["peak_at_examples"] == 10
    assert rf.held is False  # one of two types rose and fell: not a majority
    assert F.permutations_fall(frame, 1).held
    other = F.other_prompts_rise_slower(frame, 1)
    assert other.held and other.numbers["irrelevant_train"] == 5


def test_dpo_squeeze_and_extend():
    frame = _frame({
        (2, 1, "chosen"): [-80, -82, -85], (2, 1, "rejected"): [-90, -100, -120],
        (3, 1, "chosen"): [-80, -81, -82], (3, 1, "rejected"): [-90, -96, -110],
    })
    argmax = _frame({(2, 1, "chosen"): [-40, -35, -30]})
    sq = F.dpo_squeeze(frame, 2, argmax)
    assert sq.held and sq.numbers["margin"] == pytest.approx(25) and sq.numbers["argmax_confidence"] == 10
    ext = F.extend_slows_decay(frame, baseline=2, extend=3, types=("chosen", "rejected"))
    # margins: baseline 0, 8, 25; extend 0, 5, 18 -> equal margin 18: baseline reaches it at step 2
    assert ext.numbers["equal_margin"] == 18
    assert ext.numbers["chosen"]["at_margin"] == {"baseline": -5.0, "extend": -2.0}
    assert ext.held


def test_probe_means_average_in_the_database(db):
    sink = StoreSink(7, db=db)
    for step, values in ((0, [-1.0, -3.0]), (1, [-2.0, -6.0])):
        sink.emit(Observation(kind="probe", step=step, examples_seen=step * 4, stage="sft", stage_index=0,
                              probe_set="train", response_type="chosen", example_ids=[0, 1],
                              values={"logp_sum": values}))
    sink.close()
    frame = F.probe_means(db, [7])
    assert frame["mean"].tolist() == [-2.0, -4.0]
    assert F.sft_raises_chosen(frame, 7).held is False
