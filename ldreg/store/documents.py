"""The observation schema: one bucket document per run, step, probing set and response type.

A bucket holds the per-example arrays of one Observation, so a 500-example probe is one
document, not 500, and nothing grows by ``$push``. Its ``_id`` is derived from what
identifies the bucket, so a replayed spool or a retried batch writes each bucket exactly once.
The mongoengine class declares the schema and its indexes (``ensure_indexes`` reads them); no
code path reads or writes through it: the sink inserts the equivalent raw dictionaries with pymongo
(mongoengine's bulk path is several times slower), and every reader queries with raw pymongo
(``find_buckets``, ``observation_from_bucket``).

Each bucket also carries ``summary``: per quantity, the n, mean, sample std and median of its finite
values, computed when the bucket is written. The query layer's curves need only these four numbers
a bucket, so a first query copies them instead of reducing every array inside the server (which
evaluates expressions row by row); buckets written before the field existed are reduced there.
"""

from __future__ import annotations

import json
import math
from array import array
from datetime import datetime, timezone
from typing import Any, Iterator

import bson
import numpy as np
from mongoengine import DateTimeField, DictField, Document, IntField, ListField, StringField
from pymongo.database import Database

from ldreg.observations import Observation
from ldreg.store.collections import OBSERVATIONS

SCHEMA_VERSION = 1
COLLECTION = OBSERVATIONS  # named in ldreg.store.collections


def bucket_key(
    run_id: int, kind: str, stage_index: int, step: int, probe_set: str, response_type: str,
    update_type: str | None,
) -> str:
    """A readable, unambiguous id: the JSON list of the identifying fields."""
    return json.dumps([run_id, kind, stage_index, step, probe_set, response_type, update_type], separators=(",", ":"))


class ObservationBucket(Document):
    id = StringField(primary_key=True)
    run_id = IntField(required=True)  # the Sacred run's _id
    kind = StringField(required=True)
    stage = StringField(required=True)
    stage_index = IntField(required=True)
    step = IntField(required=True)
    examples_seen = IntField(required=True)
    probe_set = StringField(required=True)
    response_type = StringField(required=True)
    update_type = StringField(null=True)
    example_ids = ListField(IntField())
    values = DictField()  # quantity name -> one float per example id
    summary = DictField()  # quantity name -> {n, mean, std, median} of its finite values (bucket_summary)
    # `meta` is mongoengine's class configuration, so the attribute is named `info`.
    info = DictField(db_field="meta")
    schema_version = IntField(default=SCHEMA_VERSION)
    created = DateTimeField()

    meta = {
        "collection": COLLECTION,
        "indexes": [
            {"fields": ["run_id", "kind", "response_type", "step"]},
            {"fields": ["run_id", "kind", "probe_set", "step"]},
        ],
        "auto_create_index": False,  # created once by ensure_indexes, not on every save
    }


def _floats(values: Any) -> array:
    """A C array of doubles from a list, numpy array or tensor (C-speed conversion and check)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return array("d", values)


def _ints(ids: Any) -> list[int]:
    """Plain Python ints (C-speed for a list of ints; element by element for anything else)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    try:
        return array("q", ids).tolist()
    except (TypeError, OverflowError):  # floats such as 3.0, or ints beyond 64 bits (BSON then refuses them)
        return [int(i) for i in ids]


def value_summary(values: Any) -> dict[str, Any]:
    """n, mean, sample std and median of the finite values, bit for bit as the server's pipeline
    (``ldreg.query.pipeline.bucket_stats_stages``) computes them: sums are left folds (cumsum is
    one), std is None below two values and mean and median None when there are none, and the
    median is the midpoint of the two middle values."""
    xs = np.asarray(values, dtype=float)
    if not np.isfinite(xs).all():
        xs = xs[np.isfinite(xs)]
    n = int(xs.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "median": None}
    mean = float(np.cumsum(xs)[-1]) / n
    std = None
    if n > 1:
        deviations = xs - mean
        with np.errstate(over="ignore"):  # an overflow gives inf, as the server's loop does
            std = math.sqrt(float(np.cumsum(deviations * deviations)[-1]) / (n - 1))
    middle = np.partition(xs, [(n - 1) // 2, n // 2])
    return {"n": n, "mean": mean, "std": std, "median": (float(middle[(n - 1) // 2]) + float(middle[n // 2])) / 2}


def _bson_safe_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Fail in the caller, not in the writer thread, when meta holds what BSON cannot store."""
    try:
        bson.encode({"meta": meta})
    except (bson.errors.InvalidDocument, TypeError, OverflowError) as exc:
        raise ValueError(f"Observation.meta must hold plain JSON-like values: {exc}") from None
    return dict(meta)


def bucket_from_observation(run_id: int, obs: Observation) -> dict[str, Any]:
    """The raw document the sink inserts; the same fields ``ObservationBucket`` declares."""
    arrays = {str(name): _floats(v) for name, v in obs.values.items()}
    return {
        "_id": bucket_key(run_id, obs.kind, obs.stage_index, obs.step, obs.probe_set, obs.response_type,
                          obs.update_type),
        "run_id": int(run_id),
        "kind": obs.kind,
        "stage": obs.stage,
        "stage_index": int(obs.stage_index),
        "step": int(obs.step),
        "examples_seen": int(obs.examples_seen),
        "probe_set": obs.probe_set,
        "response_type": obs.response_type,
        "update_type": obs.update_type,
        "example_ids": _ints(obs.example_ids),
        "values": {name: a.tolist() for name, a in arrays.items()},
        "summary": {name: value_summary(np.frombuffer(a, dtype=float) if len(a) else []) for name, a in arrays.items()},
        "meta": _bson_safe_meta(obs.meta),
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc),
    }


def observation_from_bucket(doc: dict[str, Any]) -> Observation:
    """Back from a stored document to the engine's Observation."""
    return Observation(
        kind=doc["kind"], step=doc["step"], examples_seen=doc["examples_seen"], stage=doc["stage"],
        stage_index=doc["stage_index"], probe_set=doc["probe_set"], response_type=doc["response_type"],
        example_ids=list(doc["example_ids"]), values={k: list(v) for k, v in doc.get("values", {}).items()},
        update_type=doc.get("update_type"), meta=dict(doc.get("meta") or {}),
    )


def ensure_indexes(db: Database) -> None:
    """Create the document's indexes through pymongo (works on any Database, registered or not)."""
    collection = db[COLLECTION]
    for spec in ObservationBucket._meta["index_specs"]:
        collection.create_index(spec["fields"])


def find_buckets(
    db: Database, run_id: int, kind: str = "probe", *, response_type: str | None = None,
    probe_set: str | None = None, quantities: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """One run's buckets of one kind in step order, filtered the way the indexes serve.

    ``quantities`` limits ``values`` to those names (a curve needs one array, not all of them).
    """
    query: dict[str, Any] = {"run_id": run_id, "kind": kind}
    if response_type is not None:
        query["response_type"] = response_type
    if probe_set is not None:
        query["probe_set"] = probe_set
    projection = None
    if quantities is not None:
        projection = {f: 1 for f in ("run_id", "kind", "stage", "stage_index", "step", "examples_seen",
                                     "probe_set", "response_type", "update_type", "example_ids", "meta")}
        projection.update({f"values.{q}": 1 for q in quantities})
    return db[COLLECTION].find(query, projection).sort("step", 1)
