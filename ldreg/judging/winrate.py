"""Win rate of one run's answers over another's, judged pairwise with the order swapped.

Every comparison is asked twice, (A, B) and (B, A). A prompt is a win for run A only when both
orders prefer A's answer, a loss only when both prefer B's, and a tie otherwise: a judge that
prefers a position, not an answer, produces ties, never wins. A prompt scores 1, 1/2 or 0; the win
rate is the mean score, with a t-interval over prompts (or, given runs of several seeds, over the
seeds' win rates). The same swapped judging of each test pair's own y+ against y- checks the judge:
how often it agrees with the data set, and how often it flips with the order (its position bias).

Verdicts are stored in the ``judgements`` collection, keyed by the judge's identity, the runs and
the example, so asking again reuses them; deleting either run deletes them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from ldreg.errors import LdregError
from ldreg.judging.answers import KIND
from ldreg.judging.judge import Judge, JudgeQuery, checked_verdicts
from ldreg.stats import random_effects, t_interval

SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


class WinRateError(LdregError):
    """The runs cannot be compared (no stored answers, no prompt in common, lists of unequal length)."""


@dataclass
class Answers:
    """One run's stored answers, aligned by position."""

    run_id: int
    example_ids: list[int]
    prompts: list[str]
    texts: list[str]
    chosen: list[str]
    rejected: list[str]


def load_answers(db, run_id: int) -> Answers:
    """The answers run ``run_id`` wrote at its end (its spec's ``answers:``)."""
    from ldreg.store.collections import OBSERVATIONS

    doc = db[OBSERVATIONS].find_one({"run_id": int(run_id), "kind": KIND}, sort=[("step", -1)])
    if doc is None:
        raise WinRateError(f"run {run_id} has no stored answers: its spec has no `answers:` section (or the run did "
                           f"not finish); add `answers: {{n: 16}}` to the spec and rerun it")
    meta = doc.get("meta") or {}
    return Answers(int(run_id), [int(i) for i in doc["example_ids"]], list(meta.get("prompts") or []),
                   list(meta.get("texts") or []), list(meta.get("chosen") or []), list(meta.get("rejected") or []))


def swapped_outcome(first: str, second: str) -> str:
    """Run A's outcome from the verdict with A's answer shown first (``first``) and with B's shown
    first (``second``): a win or a loss only when both orders agree, else a tie."""
    if first == "A" and second == "B":
        return "win"
    if first == "B" and second == "A":
        return "loss"
    return "tie"


def flipped(first: str, second: str) -> bool:
    """The judge named the same position both times, so its choice followed the order, not the text."""
    return first == second and first in ("A", "B")


@dataclass
class Tally:
    """Outcomes for run A over prompts: counts, the win rate (ties count half) and its interval."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    flips: int = 0
    scores: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        return (self.wins + self.ties / 2) / self.n if self.n else math.nan

    def add(self, first: str, second: str) -> None:
        outcome = swapped_outcome(first, second)
        self.wins += outcome == "win"
        self.ties += outcome == "tie"
        self.losses += outcome == "loss"
        self.flips += flipped(first, second)
        self.scores.append(SCORES[outcome])

    def as_dict(self) -> dict[str, Any]:
        ci = t_interval(self.scores)
        return {"n": self.n, "wins": self.wins, "ties": self.ties, "losses": self.losses, "win_rate": self.rate,
                "ci95": [ci.low, ci.high], "flip_rate": self.flips / self.n if self.n else math.nan}


def judge_key(judge: Judge, identity: Mapping[str, Any], origin: str) -> str:
    """A short hash of who judged and how: stored verdicts are reused only under the same key."""
    from ldreg.responses import code_fingerprint

    text = json.dumps({"judge": judge.name, "origin": origin, "code": code_fingerprint(judge), **identity},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_id(*texts: str) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


class Verdicts:
    """Judges comparisons in both orders, through the store: what is stored is reused, the rest is
    judged in one batch and stored (journaled) before it is used."""

    def __init__(self, db, judge: Judge, settings: Mapping[str, Any], origin: str = ""):
        self.db, self.judge, self.settings, self.origin = db, judge, dict(settings), origin
        self.identity = judge.identity(self.settings)
        self.key = judge_key(judge, self.identity, origin)
        self.judged = self.reused = 0

    def both_orders(self, items: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """For each item (``_id``, ``run_ids``, ``prompt``, ``x``, ``y``, and what else to store), the
        verdicts with x shown first and with y shown first."""
        from pymongo import WriteConcern

        from ldreg.store.collections import JUDGEMENTS

        ids = [f"{self.key}|{item['_id']}" for item in items]
        stored = {d["_id"]: d for d in self.db[JUDGEMENTS].find({"_id": {"$in": ids}})}
        todo = [(i, item) for i, item in enumerate(items) if ids[i] not in stored]
        if todo:
            queries = ([JudgeQuery(it["prompt"], it["x"], it["y"]) for _, it in todo]
                       + [JudgeQuery(it["prompt"], it["y"], it["x"]) for _, it in todo])
            verdicts = checked_verdicts(self.judge, queries, self.settings, self.origin)
            collection = self.db.get_collection(JUDGEMENTS, write_concern=WriteConcern(j=True))
            now = datetime.now(timezone.utc)
            for k, (i, item) in enumerate(todo):
                doc = {**{f: v for f, v in item.items() if f != "_id"}, "_id": ids[i], "judge": self.judge.name,
                       "judge_key": self.key, "identity": self.identity, "first": verdicts[k],
                       "second": verdicts[k + len(todo)], "created": now}
                collection.replace_one({"_id": ids[i]}, doc, upsert=True)
                stored[ids[i]] = doc
        self.judged += len(todo)
        self.reused += len(items) - len(todo)
        return [(stored[i]["first"], stored[i]["second"]) for i in ids]


def pair_prompts(a: Answers, b: Answers, n: int | None = None) -> list[int]:
    """Positions in ``a`` of the prompts both runs answered (same example id and prompt text), first ``n``."""
    in_b = {(i, p): k for k, (i, p) in enumerate(zip(b.example_ids, b.prompts))}
    common = [k for k, key in enumerate(zip(a.example_ids, a.prompts)) if key in in_b]
    if not common:
        raise WinRateError(f"runs {a.run_id} and {b.run_id} answered no prompt in common (different data, split "
                           f"or answers.source); compare runs of the same data and data.split_seed")
    return common[:n] if n else common


def compare(db, verdicts: Verdicts, run_a: int, run_b: int, n: int | None = None) -> Tally:
    """Run A's answers against run B's on their common prompts, both orders."""
    a, b = load_answers(db, run_a), load_answers(db, run_b)
    where_b = {(i, p): k for k, (i, p) in enumerate(zip(b.example_ids, b.prompts))}
    items = []
    for k in pair_prompts(a, b, n):
        kb = where_b[(a.example_ids[k], a.prompts[k])]
        items.append({"_id": f"answers|{run_a}|{run_b}|{a.example_ids[k]}", "kind": "answers",
                      "run_ids": [int(run_a), int(run_b)], "example_id": a.example_ids[k], "prompt": a.prompts[k],
                      "x": a.texts[k], "y": b.texts[kb]})
    tally = Tally()
    for first, second in verdicts.both_orders(items):
        tally.add(first, second)
    return tally


def sanity(db, verdicts: Verdicts, run_ids: Sequence[int], n: int | None = None) -> Tally:
    """The judge against the data set: each answered prompt's y+ (as A's side) against its y-.

    A "win" is agreement with the data set's preference; a "flip" a verdict that followed the order.
    """
    items, seen = [], set()
    for run_id in run_ids:
        a = load_answers(db, run_id)
        for k in range(len(a.example_ids))[:n]:
            if k >= len(a.chosen) or k >= len(a.rejected):
                continue
            cid = _content_id(a.prompts[k], a.chosen[k], a.rejected[k])
            if cid in seen:
                continue
            seen.add(cid)
            items.append({"_id": f"sanity|{cid}", "kind": "sanity", "run_ids": [int(r) for r in run_ids],
                          "example_id": a.example_ids[k], "prompt": a.prompts[k], "x": a.chosen[k],
                          "y": a.rejected[k]})
    tally = Tally()
    for first, second in verdicts.both_orders(items):
        tally.add(first, second)
    return tally


@dataclass
class WinRate:
    judge: str
    identity: dict[str, Any]
    pairs: list[dict[str, Any]]
    overall: dict[str, Any]
    sanity: dict[str, Any] | None
    judged: int
    reused: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def win_rate(db, judge: Judge, settings: Mapping[str, Any], runs_a: Sequence[int], runs_b: Sequence[int], *,
             n: int | None = None, origin: str = "", check: bool = True) -> WinRate:
    """Runs ``runs_a[i]`` against ``runs_b[i]`` (one pair per seed), pooled, and the judge's sanity check.

    The overall interval is over prompts for one pair, and over the pairs' win rates (seed as a
    random effect, k - 1 degrees of freedom) for two or more.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise WinRateError(f"RUN_A and RUN_B must list the same number of runs (one pair per seed), got "
                           f"{len(runs_a)} and {len(runs_b)}")
    verdicts = Verdicts(db, judge, settings, origin)
    pairs, pooled = [], Tally()
    for run_a, run_b in zip(runs_a, runs_b):
        tally = compare(db, verdicts, run_a, run_b, n)
        pairs.append({"run_a": int(run_a), "run_b": int(run_b), **tally.as_dict()})
        for name in ("wins", "ties", "losses", "flips"):
            setattr(pooled, name, getattr(pooled, name) + getattr(tally, name))
        pooled.scores += tally.scores
    overall = pooled.as_dict()
    if len(pairs) >= 2:
        ci = random_effects([p["win_rate"] for p in pairs])
        overall.update(ci95=[ci.low, ci.high], interval_over="seeds")
    else:
        overall["interval_over"] = "prompts"
    checked = sanity(db, verdicts, runs_a, n).as_dict() if check else None
    if checked is not None:
        checked = {"n": checked["n"], "agreement": checked["wins"] / checked["n"] if checked["n"] else math.nan,
                   "contradiction": checked["losses"] / checked["n"] if checked["n"] else math.nan,
                   "flip_rate": checked["flip_rate"], "agree": checked["wins"], "contradict": checked["losses"],
                   "undecided": checked["ties"] - round(checked["flip_rate"] * checked["n"]) if checked["n"] else 0}
    return WinRate(judge.name, verdicts.identity, pairs, overall, checked, verdicts.judged, verdicts.reused)
