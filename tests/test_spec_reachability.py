"""Every engine option is reachable from a spec field: probe prompt sharing, the influence mode,
the eNTK mode and projection, and the response generators' options (model_rephrase's model).

One real tracked run (Sacred, the embedded server) sets them all away from their defaults; the
test reads back the recorded config and the stored observations to see each setting took effect.
Bad values are refused by `ldreg run --dry-run` in one line naming the field.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from ldreg import config
from ldreg.backends import resolve_backend
from ldreg.cli import main
from ldreg.observations import ListSink
from ldreg.registry import get_plugins
from ldreg.runner import run_body
from ldreg.spec import load

from test_cli import SMOKE

DB = "spec_reachability"


def _settings(rephrase_model) -> list[str]:
    return ["stages.0.epochs=0.25", "probing.share_prompts=false", "probing.influence.mode=per_example",
            "probing.entk.mode=full", "probing.entk.projection_dim=3",
            "probing.response_types=[chosen,model_rephrase]", f"probing.options.rephrase_model={rephrase_model}",
            "probing.options.max_new_tokens=6", "probing.options.selfr_raw=true"]


@pytest.fixture(scope="module")
def tracked(mongo_server, mongo_client, tiny_model_dir):
    """One real run with every setting off its default: (run document, its observations)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LDREG_MONGO_URL", mongo_server.url)
    mp.setenv("LDREG_DB", DB)
    mp.setenv("LDREG_HEARTBEAT_S", "0.5")
    result = CliRunner().invoke(main, ["run", str(SMOKE), "--no-progress", "with", *_settings(tiny_model_dir)],
                                catch_exceptions=False)
    mp.undo()
    assert result.exit_code == 0, result.output
    run = mongo_client[DB].runs.find_one(sort=[("_id", -1)])
    return run, list(mongo_client[DB].observations.find({"run_id": run["_id"]}))


def test_the_settings_are_recorded_in_the_runs_config(tracked, tiny_model_dir):
    run, _ = tracked
    probing = run["config"]["probing"]
    assert run["status"] == "COMPLETED"
    assert probing["share_prompts"] is False and probing["influence"]["mode"] == "per_example"
    assert probing["entk"]["mode"] == "full" and probing["entk"]["projection_dim"] == 3
    assert probing["options"] == {"rephrase_model": str(tiny_model_dir), "max_new_tokens": 6, "selfr_raw": True}


def test_influence_ran_per_example_and_the_entk_was_projected(tracked):
    _, observations = tracked
    influence = [o for o in observations if o["kind"] == "influence"]
    assert influence and {o["meta"]["mode"] for o in influence} == {"per_example"}
    (entk,) = [o for o in observations if o["kind"] == "entk"]
    assert entk["meta"]["mode"] == "full+projection" and entk["meta"]["projection_dim"] == 3
    gram = np.array(entk["values"]["gram"]).reshape(6, 6)
    assert np.allclose(gram, gram.T) and np.linalg.eigvalsh(gram).min() > -1e-6 * abs(gram).max()
    # a rank-3 projection of 6 gradients: the Gram has rank at most 3
    assert np.linalg.matrix_rank(gram, tol=1e-8 * abs(gram).max()) <= 3


def test_model_rephrase_got_its_model_from_the_spec(tracked, tiny_model_dir):
    run, observations = tracked
    rephrased = [o for o in observations if o["kind"] == "probe" and o["response_type"] == "model_rephrase"]
    assert rephrased and all(np.isfinite(o["values"]["logp_sum"]).all() for o in rephrased)
    headers = [json.loads(p.read_text().splitlines()[0]) for p in (config.cache_dir() / "probing").glob("*.jsonl")]
    makers = [h["metadata"]["generators"]["model_rephrase"] for h in headers if "model_rephrase" in h["types"]]
    assert makers and {m["model"] for m in makers} == {str(tiny_model_dir)}


def test_share_prompts_decides_whether_prompts_are_shared_and_changes_no_number(tracked, tiny_model_dir):
    _, observations = tracked
    unshared = [o for o in observations if o["kind"] == "probe"]
    assert unshared and {o["meta"]["prompts_shared"] for o in unshared} == {0}
    plugins = get_plugins()
    overrides = [s for s in _settings(tiny_model_dir) if not s.startswith("probing.share_prompts")]
    spec = load(SMOKE, overrides, plugins)  # share_prompts: its default, true
    sink = ListSink()
    ctx = SimpleNamespace(run_id=0, info={}, log_scalar=lambda *a: None, add_artifact=lambda *a: None)
    run_body(spec, ctx, plugins=plugins, backend=resolve_backend("cpu", plugins.backends), progress=False, sink=sink)
    shared = {o.response_type: o for o in sink.observations if o.kind == "probe" and o.step == 0}
    counts = {o.meta["prompts_shared"] for o in shared.values()}
    # of the 8 probe examples, those whose prompt every type kept whole (truncation can cut one)
    assert len(counts) == 1 and 0 < counts.pop() <= 8
    for o in unshared:
        if o["step"] == 0:
            assert np.allclose(o["values"]["logp_sum"], shared[o["response_type"]].values["logp_sum"], atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (["probing.share_prompts=maybe"], "probing.share_prompts: expected true or false, got 'maybe'"),
    (["probing.influence.mode=all"], "probing.influence.mode: must be 'batch' or 'per_example', not 'all'"),
    (["probing.entk.mode=fulll"], "probing.entk.mode: must be 'auto' or 'full' or 'last_layer', not 'fulll'"),
    (["probing.entk.projection_dim=0"], "probing.entk.projection_dim: must be > 0"),
    (["probing.entk.max_params=-5"], "probing.entk.max_params: must be > 0"),
    (["probing.response_types=[chosen,model_rephrase]"], "probing.options.rephrase_model: required"),
    (["probing.response_types=[chosen,model_rephrase]", "probing.options.rephrase_model=./no-such-model"],
     "probing.options.rephrase_model: no such directory"),
    (["probing.response_types=[chosen,model_rephrase]", "probing.options.rephrase_model=/tmp",
      "probing.options.rephrase_sampling=beam"],
     "probing.options.rephrase_sampling: must be one of 'greedy', 'sample', got 'beam'"),
    (["probing.response_types=[chosen,chosen_rephrase_semantic]", "probing.options.semantic_rat=0.2"],
     "probing.options.semantic_rat: no probed response type reads this option (did you mean 'semantic_rate'?)"),
    (["probing.response_types=[chosen,chosen_rephrase_semantic]", "probing.options.semantic_rate=2"],
     "probing.options.semantic_rate: must be a number in [0, 1], got 2"),
])
def test_a_bad_value_is_one_line_naming_the_field(overrides, message):
    result = CliRunner().invoke(main, ["run", str(SMOKE), "--dry-run", "with", *overrides])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
