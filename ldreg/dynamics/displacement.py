"""Likelihood displacement (Razin et al., "Unintentional Unalignment", ICLR 2025), from the probe pass.

A preference loss can raise the margin log pi(y+) - log pi(y-) while log pi(y+) itself falls: the
chosen response is "displaced". The probe pass already measures log pi(y+), log pi(y-) and the
argmax confidence of every probe example, so displacement needs no forward pass of its own: this
module keeps each probing set's values at the start of the stage and compares every later probe
with them (docs/displacement.md).

Per example, since the stage start:

    d_chosen     change of log pi(y+|x)           (summed nats)
    d_rejected   change of log pi(y-|x)
    d_margin     d_chosen - d_rejected
    d_argmax     change of the argmax confidence on y+'s positions (``argmax_logp`` of the chosen type)
    displaced    1 where d_chosen < 0 and d_margin > 0, else 0
    squeezed     1 where d_chosen < 0, d_rejected < 0 and d_argmax > 0 (the squeezing signature)

The share of displaced (and of squeezed) examples goes into the observation's ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ldreg.observations import Observation

KIND = "displacement"
RESPONSE_TYPE = "pair"  # one observation per probing set: it compares two response types
QUANTITIES = ("d_chosen", "d_rejected", "d_margin", "d_argmax", "displaced", "squeezed")


def displacement_values(start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-example changes and flags between two probes; each argument maps ``chosen``,
    ``rejected`` and ``argmax`` (the argmax confidence of the chosen response) to arrays."""
    d_chosen = np.asarray(now["chosen"], float) - np.asarray(start["chosen"], float)
    d_rejected = np.asarray(now["rejected"], float) - np.asarray(start["rejected"], float)
    d_argmax = np.asarray(now["argmax"], float) - np.asarray(start["argmax"], float)
    d_margin = d_chosen - d_rejected
    return {
        "d_chosen": d_chosen, "d_rejected": d_rejected, "d_margin": d_margin, "d_argmax": d_argmax,
        "displaced": ((d_chosen < 0) & (d_margin > 0)).astype(float),
        "squeezed": ((d_chosen < 0) & (d_rejected < 0) & (d_argmax > 0)).astype(float),
    }


def summary(values: Mapping[str, np.ndarray]) -> dict[str, float | bool | int]:
    """The set-level numbers an alarm reads: shares of flagged examples and the mean changes.

    ``squeeze_signature`` is the squeezing effect on the set's means (y+ and y- both down while
    the argmax confidence rises), the paper's DPO finding read live.
    """
    n = len(values["d_chosen"])
    mean = {q: float(np.nanmean(values[q])) if n else 0.0 for q in ("d_chosen", "d_rejected", "d_argmax")}
    return {
        "n": n,
        "displaced_share": float(np.mean(values["displaced"])) if n else 0.0,
        "squeezed_share": float(np.mean(values["squeezed"])) if n else 0.0,
        "mean_d_chosen": mean["d_chosen"], "mean_d_rejected": mean["d_rejected"], "mean_d_argmax": mean["d_argmax"],
        "squeeze_signature": bool(n and mean["d_chosen"] < 0 and mean["d_rejected"] < 0 and mean["d_argmax"] > 0),
    }


@dataclass
class Crossing:
    """An alarm that has just fired: which, on which probing set, when, and the numbers behind it."""

    alarm: str  # "displacement_share" or "squeeze"
    probe_set: str
    step: int
    examples_seen: int
    stage: str
    stage_index: int
    threshold: float | bool
    value: float | bool
    summary: dict[str, Any]

    def message(self) -> str:
        s = self.summary
        if self.alarm == "squeeze":
            what = (f"squeezing signature: mean change of y+ {s['mean_d_chosen']:+.3g}, y- {s['mean_d_rejected']:+.3g}, "
                    f"argmax confidence {s['mean_d_argmax']:+.3g} nats since the stage start")
        else:
            what = (f"{s['displaced_share']:.0%} of {s['n']} examples displaced (log pi(y+) fell while the margin rose; "
                    f"threshold {self.threshold:.0%})")
        return (f"ALARM {self.alarm} on probing set {self.probe_set!r} at step {self.step} "
                f"(stage {self.stage}, {self.examples_seen} examples seen): {what}")


@dataclass
class Alarms:
    """Thresholds from the spec; each alarm fires once per probing set, the first time it is crossed."""

    displacement_share: float | None = None
    squeeze: bool = False
    fired: set[tuple[str, str]] = field(default_factory=set)

    def check(self, probe_set: str, stats: Mapping[str, Any], *, step: int, examples_seen: int, stage: str,
              stage_index: int) -> list[Crossing]:
        where = dict(probe_set=probe_set, step=step, examples_seen=examples_seen, stage=stage,
                     stage_index=stage_index, summary=dict(stats))
        out = []
        if (self.displacement_share is not None and stats["displaced_share"] >= self.displacement_share
                and ("displacement_share", probe_set) not in self.fired):
            out.append(Crossing("displacement_share", threshold=self.displacement_share,
                                value=stats["displaced_share"], **where))
        if self.squeeze and stats["squeeze_signature"] and ("squeeze", probe_set) not in self.fired:
            out.append(Crossing("squeeze", threshold=True, value=True, **where))
        self.fired.update((c.alarm, probe_set) for c in out)
        return out


@dataclass
class DisplacementTracker:
    """Keeps each probing set's stage-start values and turns every probe into a displacement observation.

    The first probe of a stage is its baseline (displacement 0 there). ``state``/``restore`` carry the
    baselines through a checkpoint, so a resumed run compares with the same stage start.
    """

    chosen: str = "chosen"
    rejected: str = "rejected"
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # probe set -> stage_index, ids, values
    resumed_in: int | None = None  # the stage a resume began inside: its start was probed by an earlier process

    def applies(self, result: Mapping[str, Any]) -> bool:
        return self.chosen in result and self.rejected in result

    def observe(self, result: Mapping[str, Mapping[str, np.ndarray]], example_ids: Sequence[int], *, step: int,
                examples_seen: int, stage: str, stage_index: int, probe_set: str) -> Observation | None:
        """The displacement observation of one probe pass of one set (None without both types, or
        after a resume whose checkpoint had no baseline for this stage)."""
        if not self.applies(result):
            return None
        now = {"chosen": result[self.chosen]["logp_sum"], "rejected": result[self.rejected]["logp_sum"],
               "argmax": result[self.chosen]["argmax_logp"]}
        base = self.baselines.get(probe_set)
        if base is None or base["stage_index"] != stage_index:
            if stage_index == self.resumed_in or (base is not None and base["stage_index"] > stage_index):
                return None  # this stage's start is not known here: no baseline rather than a wrong one
            base = {"stage_index": stage_index, "step": step, "example_ids": [int(i) for i in example_ids],
                    "values": {k: [float(v) for v in a] for k, a in now.items()}}
            self.baselines[probe_set] = base
        if base["example_ids"] != [int(i) for i in example_ids]:
            return None
        values = displacement_values({k: np.asarray(v) for k, v in base["values"].items()}, now)
        stats = summary(values)
        return Observation(kind=KIND, step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
                           probe_set=probe_set, response_type=RESPONSE_TYPE, example_ids=[int(i) for i in example_ids],
                           values={q: [float(v) for v in values[q]] for q in QUANTITIES},
                           meta={**stats, "stage_start_step": base["step"], "chosen": self.chosen,
                                 "rejected": self.rejected})

    def state(self) -> dict[str, Any]:
        return {"baselines": self.baselines}

    def restore(self, state: Mapping[str, Any] | None, stage_index: int) -> None:
        """Take the baselines a checkpoint saved; the run resumes inside stage ``stage_index``."""
        self.baselines = dict((state or {}).get("baselines") or {})
        self.resumed_in = stage_index
