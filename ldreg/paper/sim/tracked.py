"""The simulations as tracked runs: Sacred records them, their observations go to the store.

So the squeezing effect and the digits eNTK sit in the same database as the LLM runs and are
queried the same way. Each run's result holds the claims checked over many seeds, with numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldreg.paper.sim import digits, squeeze
from ldreg.tracking import RunContext, run_tracked


def squeeze_claims(seeds: range) -> dict[str, Any]:
    """Claims 1-4 of docs/math.md §7 over ``seeds``: how often each held, with the fractions that matter."""
    held = {"claim1_target_falls": 0, "claim2_argmax_rises": 0, "checked": 0}
    falling: dict[str, list[float]] = {"flat": [], "uniform": [], "peaky_valley": [], "peaky_peak": []}
    valley_harder = []
    for seed in seeds:
        for init in ("flat", "uniform", "peaky"):
            problem = squeeze.draw_problem(init, seed)
            pi = problem.probs
            for k in (int(np.argmin(pi)), int(np.argmax(pi))):
                r = squeeze.run_steps(problem, ((k, -0.5),), case=init, seed=seed)
                held["checked"] += 1
                held["claim1_target_falls"] += squeeze.target_falls(r)
                held["claim2_argmax_rises"] += squeeze.argmax_rises(r)
            if init == "peaky":
                peak, valley = squeeze.peak_and_valley(seed)
                falling["peaky_valley"].append(squeeze.fraction_falling(valley))
                falling["peaky_peak"].append(squeeze.fraction_falling(peak))
                valley_harder.append(squeeze.valley_squeezes_harder(seed)["mean_log_alpha"])
            else:
                r = squeeze.run_steps(problem, ((int(np.argmin(pi)), -0.5),), case=init, seed=seed)
                falling[init].append(squeeze.fraction_falling(r))
    return {
        "seeds": len(seeds),
        **held,
        "claim3_fraction_falling": {k: round(float(np.mean(v)), 4) for k, v in falling.items()},
        "claim4_valley_harder_fraction": round(float(np.mean([bool(v) for v in valley_harder])), 4),
    }


def run_squeeze(url: str, seeds: int = 200, sink_factory=None) -> tuple[int, dict[str, Any], list]:
    """The authors' cases (seed 10086), stored; the claims over ``seeds`` seeds as the result."""
    results: list = []

    def body(ctx: RunContext) -> dict[str, Any]:
        sink = _sink(ctx, sink_factory)
        try:
            results.extend(squeeze.run_all())
            for r in results:
                for obs in squeeze.squeeze_observations(r):
                    sink.emit(obs)
        finally:
            sink.close()
        return squeeze_claims(range(seeds))

    run_id, result = run_tracked("squeeze-simulation", {"seed": squeeze.AUTHORS_SEED, "claim_seeds": seeds},
                                 body, url=url, tags=["simulation"])
    return run_id, result, results


def run_digits(url: str, seed: int = 0, epochs: int = 12, sink_factory=None) -> tuple[int, dict[str, Any], Any]:
    """Figure 1: the digits CNN, its class eNTK, and one update's influence, stored."""
    holder: list = []

    def body(ctx: RunContext) -> dict[str, Any]:
        result = digits.run(seed, epochs=epochs)
        holder.append(result)
        sink = _sink(ctx, sink_factory)
        try:
            for obs in digits.digits_observations(result):
                sink.emit(obs)
        finally:
            sink.close()
        matrix = result.class_entk
        off = matrix[~np.eye(len(matrix), dtype=bool)]
        return {"test_accuracy": round(result.test_accuracy, 4),
                "diagonal_over_offdiagonal": round(float(np.mean(np.diag(matrix)) / np.mean(off)), 3),
                "influence": {k: float(v) for k, v in result.mean_influence().items()},
                "similar_class": result.similar_class, "dissimilar_class": result.dissimilar_class}

    run_id, result = run_tracked("digits-entk", {"seed": seed, "epochs": epochs}, body, url=url, tags=["simulation"])
    return run_id, result, holder[0]


def _sink(ctx: RunContext, factory):
    if factory is not None:
        return factory(ctx.run_id)
    from ldreg.store.sink import StoreSink

    return StoreSink(ctx.run_id)
