"""The bucket document: deterministic ids, raw dict == mongoengine's form, round trips, indexes."""

from __future__ import annotations

import numpy as np
import pytest

from ldreg.observations import Observation
from ldreg.store.documents import (
    COLLECTION, SCHEMA_VERSION, ObservationBucket, bucket_from_observation, bucket_key, ensure_indexes,
    find_buckets, observation_from_bucket,
)


def _obs(step=10, response_type="chosen", update_type=None, **values):
    return Observation(
        kind="probe" if update_type is None else "influence", step=step, examples_seen=step * 4, stage="sft",
        stage_index=0, probe_set="train", response_type=response_type, example_ids=[3, 5, 8],
        values=values or {"logp_sum": [-1.5, -2.25, -3.0]}, update_type=update_type, meta={"seq_len": 12},
    )


def test_key_is_deterministic_and_distinguishes_every_field():
    assert bucket_key(7, "probe", 0, 10, "train", "chosen", None) == '[7,"probe",0,10,"train","chosen",null]'
    keys = {
        bucket_key(7, "probe", 0, 10, "train", "chosen", None),
        bucket_key(8, "probe", 0, 10, "train", "chosen", None),
        bucket_key(7, "influence", 0, 10, "train", "chosen", None),
        bucket_key(7, "probe", 1, 10, "train", "chosen", None),
        bucket_key(7, "probe", 0, 11, "train", "chosen", None),
        bucket_key(7, "probe", 0, 10, "test", "chosen", None),
        bucket_key(7, "probe", 0, 10, "train", "rejected", None),
        bucket_key(7, "probe", 0, 10, "train", "chosen", "null"),
        bucket_key(7, "probe", 0, 10, "train,chosen", "x", None),
    }
    assert len(keys) == 9


def test_raw_document_is_what_mongoengine_would_write():
    raw = bucket_from_observation(7, _obs())
    assert raw["values"] == {"logp_sum": [-1.5, -2.25, -3.0]} and raw["schema_version"] == SCHEMA_VERSION
    declared = ObservationBucket(
        id=raw["_id"], run_id=7, kind="probe", stage="sft", stage_index=0, step=10, examples_seen=40,
        probe_set="train", response_type="chosen", example_ids=[3, 5, 8], values=raw["values"],
        info={"seq_len": 12}, created=raw["created"],
        summary={"logp_sum": {"n": 3, "mean": -2.25, "std": 0.75, "median": -2.25}},  # worked by hand
    )
    assert declared.to_mongo().to_dict() == raw


def test_arrays_and_tensors_become_plain_floats():
    import torch

    raw = bucket_from_observation(1, _obs(logp_sum=np.array([1, 2, 3], dtype=np.float32),
                                          prob=torch.tensor([0.5, 0.25, 0.125])))
    assert raw["values"] == {"logp_sum": [1.0, 2.0, 3.0], "prob": [0.5, 0.25, 0.125]}
    assert all(type(v) is float for v in raw["values"]["prob"])


def test_values_that_are_not_numbers_fail_in_the_caller():
    with pytest.raises(TypeError):
        bucket_from_observation(1, _obs(logp_sum=["a", "b", "c"]))
    obs = _obs()
    obs.meta = {"thing": object()}
    with pytest.raises(ValueError, match="meta"):
        bucket_from_observation(1, obs)


def test_round_trip_through_the_database(db):
    ensure_indexes(db)
    first, second = _obs(step=20), _obs(step=10, response_type="rejected")
    db[COLLECTION].insert_many([bucket_from_observation(7, o) for o in (first, second, _obs(step=5))])
    stored = db[COLLECTION].find_one({"_id": bucket_from_observation(7, first)["_id"]})
    assert observation_from_bucket(stored) == first
    chosen = [d["step"] for d in find_buckets(db, 7, response_type="chosen")]
    assert chosen == [5, 20]
    trimmed = next(find_buckets(db, 7, response_type="rejected", quantities=["logp_sum"]))
    assert trimmed["values"] == {"logp_sum": [-1.5, -2.25, -3.0]} and "created" not in trimmed
    names = {tuple(k for k, _ in ix["key"].items()) for ix in db[COLLECTION].list_indexes()}
    assert ("run_id", "kind", "response_type", "step") in names and ("run_id", "kind", "probe_set", "step") in names


def test_mongoengine_reads_what_the_sink_writes(mongo_server, mongo_client, db):
    """Through an alias of its own: ldreg's ``default`` connection, which an earlier in-process CLI
    test leaves registered to another database, is neither needed nor disturbed (order-independent)."""
    from mongoengine import connect, disconnect
    from mongoengine.context_managers import switch_db

    from ldreg.store import connection

    connection.connect(mongo_server.url, "elsewhere")  # as an earlier in-process CLI test leaves it
    db[COLLECTION].insert_one(bucket_from_observation(9, _obs(update_type="sft_chosen")))
    alias = f"reader-{db.name}"
    connect(db=db.name, host=mongo_client.address[0], port=mongo_client.address[1], alias=alias,
            uuidRepresentation="standard")
    try:
        with switch_db(ObservationBucket, alias) as Bucket:
            bucket = Bucket.objects.get(run_id=9)
        assert bucket.update_type == "sft_chosen" and bucket.info == {"seq_len": 12}
        assert bucket.values["logp_sum"] == [-1.5, -2.25, -3.0]
    finally:
        disconnect(alias)
        connection.disconnect()
