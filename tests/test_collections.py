"""Collection names live in ldreg.store.collections alone, and deleting a run empties every cache of it."""

import ast
from pathlib import Path

from ldreg.store import collections as C

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "ldreg" / "store" / "collections.py"
OURS = {C.OBSERVATIONS, C.COUNTERS, *C.PER_RUN_CACHES}  # ldreg's own collections: named nowhere else
SACRED = {C.RUNS, C.METRICS}  # Sacred's: the store modules name them through C too
STORE = [ROOT / "ldreg" / "store" / f for f in ("runs.py", "sink.py", "spool.py", "metrics.py", "documents.py")]


def _db_like(node: ast.AST) -> bool:
    """``db``, ``self.db``, ``database(...)``/``connect()``: what a collection is read from."""
    if isinstance(node, ast.Name):
        return node.id == "db"
    if isinstance(node, ast.Attribute):
        return node.attr == "db"
    return isinstance(node, ast.Call)


def literal_names(path: Path, names: set[str]) -> list[str]:
    """Where ``path`` spells one of ``names`` as a collection: db["x"], db.x, get_collection("x"), x = "x"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        hit = None
        if isinstance(node, ast.Subscript) and _db_like(node.value) and isinstance(node.slice, ast.Constant):
            hit = node.slice.value
        elif isinstance(node, ast.Attribute) and _db_like(node.value) and node.attr in names:
            hit = node.attr
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_collection" and node.args \
                and isinstance(node.args[0], ast.Constant):
            hit = node.args[0].value
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            hit = node.value.value  # a module constant spelling a collection name
        if hit in names:
            found.append(f"{path}:{node.lineno}: {hit!r}")
    return found


def test_ldreg_collections_are_named_only_in_the_store_module():
    files = [p for d in ("ldreg", "plugins", "bench") for p in (ROOT / d).rglob("*.py") if p != HOME]
    assert len(files) > 50
    found = [hit for p in files for hit in literal_names(p, OURS)]
    assert found == [], "name these through ldreg.store.collections:\n" + "\n".join(found)
    store = [hit for p in STORE for hit in literal_names(p, SACRED)]
    assert store == [], "name these through ldreg.store.collections:\n" + "\n".join(store)


def test_the_check_sees_each_way_of_spelling_a_collection(tmp_path):
    bad = tmp_path / "spells.py"
    bad.write_text('OBS = "observations"\nx = db["observation_stats"]\ny = db.counters\n'
                   'z = self.db.get_collection("observation_stats_derived")\nrow = {"observations": 1}\n')
    assert len(literal_names(bad, OURS)) == 4  # the dict key is not a collection


def test_delete_run_empties_every_per_run_cache_and_its_events(db):
    from ldreg.store.runs import delete_run

    for run_id in (5, 50):
        db[C.RUNS].insert_one({"_id": run_id, "status": "COMPLETED"})
        db[C.OBSERVATIONS].insert_one({"_id": f"b{run_id}", "run_id": run_id})
        db[C.STATS].insert_one({"_id": f"s{run_id}", "run_id": run_id})
        for name in (C.STATS_SUMMARISED, C.STATS_DERIVED, C.STATS_TABLES):
            db[name].insert_one({"_id": f"{run_id}|probe|logp_sum"})
        db[C.EVENTS].insert_one({"run_id": run_id, "alarm": "displacement_share"})
    counts = delete_run(5, db)
    assert counts["observations"] == 1 and counts["summaries"] == 4 and counts["runs"] == 1
    assert counts["events"] == 1
    for name in (C.RUNS, C.OBSERVATIONS, C.EVENTS, *C.PER_RUN_CACHES):
        assert db[name].count_documents({}) == 1, name  # run 50's, and only it, is left
    assert db[C.STATS_DERIVED].find_one()["_id"].startswith("50|")
