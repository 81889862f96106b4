"""The squeezing effect in multi-class logistic regression (paper Section 3.3, Appendix E).

A fixed feature h, logits z = W h, pi = softmax(z). One SGD step on cross-entropy at label k
with learning rate eta changes W by -eta (pi - e_k) h^T, so the logits move in closed form:

    z' = z - eta ||h||^2 (pi - e_k)

eta > 0 is an ordinary (positive) step that pulls k up; eta < 0 is the negative gradient of
DPO-like losses. Several (k, eta) pairs in one step all use the same pi, as the authors'
notebook does. Everything is float64 numpy: the claims are about exact signs, not noise.

The draws follow the authors' notebook (seed 10086): one NumPy legacy stream yields, in order,
h (4), W "uniform" = randn (4 x 50), W "flat" = 1 + 0.05 randn, the randn base of W "peaky"
(then one step at lr 1 towards the multi-hot target over classes 5-12), and, only for the
large case, h (50) and W = 0.5 randn (50 x 1000). Any other seed reruns that recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ldreg.errors import SpecError
from ldreg.observations import Observation

AUTHORS_SEED = 10086
PEAKY_CLASSES = tuple(range(5, 13))  # the multi-hot target that makes "peaky" W
# In a case's steps, the class pushed is found on the start the case draws: "peak" is the most
# likely class. (The notebook pushed class 11, the third most likely on its own draw, p = 0.029,
# while the peak is class 8, p = 0.763: a case that claims the peak must push the peak.)
PEAK = "peak"


@dataclass(frozen=True)
class SqueezeCase:
    """One of the authors' settings: which W to start from and which steps to take.

    ``steps`` holds (class, eta) pairs: eta > 0 pulls the class up, eta < 0 pushes it down; a
    class may be ``PEAK``, the most likely class of the start.
    """

    name: str
    init: str  # "uniform" | "flat" | "peaky" | "large"
    steps: tuple[tuple[int | str, float], ...]
    description: str


CASES: dict[str, SqueezeCase] = {
    c.name: c
    for c in (
        SqueezeCase("positive", "uniform", ((21, 0.5),), "positive step on class 21, W = randn"),
        SqueezeCase("flat_negative", "flat", ((42, -0.3),), "negative step on class 42, flat pi"),
        SqueezeCase("peak_negative", "peaky", ((PEAK, -0.5),), "negative step on the peak (the most likely class)"),
        SqueezeCase("valley_negative", "peaky", ((42, -0.5),), "negative step on the valley class 42"),
        # The notebook's final version adds a positive step on 25. With one shared h the two
        # equal and opposite steps cancel on every other logit: only z_42 falls and z_25 rises.
        SqueezeCase(
            "valley_with_positive",
            "peaky",
            ((42, -0.5), (25, 0.5)),
            "negative step on the valley class 42 plus a positive step on class 25",
        ),
        SqueezeCase("large_vocab", "large", ((100, -1.0),), "V = 1000, d = 50, negative step on class 100"),
    )
}


@dataclass(frozen=True)
class Problem:
    """A feature vector and a read-out matrix (V x d): everything one step needs."""

    h: np.ndarray
    W: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.W @ self.h)


@dataclass
class SqueezeResult:
    """pi before and after one step, and what the claims are about."""

    case: str
    seed: int
    before: np.ndarray
    after: np.ndarray
    steps: tuple[tuple[int, float], ...]
    meta: dict = field(default_factory=dict)

    @property
    def alpha(self) -> np.ndarray:
        """alpha_i = pi_i^{t+1} / pi_i^t: > 1 where class i gained mass."""
        return self.after / self.before

    @property
    def negative_targets(self) -> list[int]:
        return [k for k, eta in self.steps if eta < 0]

    @property
    def targets(self) -> list[int]:
        return [k for k, _ in self.steps]

    @property
    def argmax(self) -> int:
        """The most likely class before the step, among classes not pushed down (y* of Claim 2)."""
        masked = self.before.copy()
        masked[self.negative_targets] = -np.inf
        return int(np.argmax(masked))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def one_step(problem: Problem, steps: tuple[tuple[int, float], ...]) -> Problem:
    """One SGD step on cross-entropy for every (k, eta) in ``steps``, all at the same pi."""
    pi = problem.probs
    grad_z = np.zeros_like(pi)
    for k, eta in steps:
        if not 0 <= k < pi.size:
            raise SpecError(f"squeeze step class {k} is outside 0..{pi.size - 1}; pick a class index in range")
        target = np.zeros_like(pi)
        target[k] = 1.0
        grad_z += eta * (pi - target)
    return Problem(problem.h, problem.W - np.outer(grad_z, problem.h))


def draw_problem(init: str, seed: int) -> Problem:
    """The authors' recipe for one starting point, reproduced draw for draw for their seed."""
    rng = np.random.RandomState(seed)
    h = rng.randn(4)
    # the notebook stores W as d x V; draw in that layout, keep V x d here
    w_uniform = rng.randn(4, 50).T
    w_flat = 1.0 + 0.05 * rng.randn(4, 50).T
    w_peaky_base = rng.randn(4, 50).T
    if init == "uniform":
        return Problem(h, w_uniform)
    if init == "flat":
        return Problem(h, w_flat)
    if init == "peaky":
        # one step at lr 1 towards the un-normalised multi-hot target, as in the notebook
        base = Problem(h, w_peaky_base)
        multi_hot = np.zeros(50)
        multi_hot[list(PEAKY_CLASSES)] = 1.0
        return Problem(h, base.W - np.outer(base.probs - multi_hot, h))
    if init == "large":
        return Problem(rng.randn(50), 0.5 * rng.randn(50, 1000).T)
    raise SpecError(f"unknown squeeze init {init!r}; use one of uniform, flat, peaky, large")


def _case(case: str | SqueezeCase) -> SqueezeCase:
    if isinstance(case, SqueezeCase):
        return case
    if case not in CASES:
        raise SpecError(f"unknown squeeze case {case!r}; use one of {', '.join(CASES)}")
    return CASES[case]


def run_steps(problem: Problem, steps: tuple[tuple[int, float], ...], *, case: str = "custom", seed: int = -1) -> SqueezeResult:
    """pi before and after one step from a given starting point."""
    return SqueezeResult(case, seed, problem.probs, one_step(problem, steps).probs, tuple(steps))


def resolve_steps(problem: Problem, steps: tuple[tuple[int | str, float], ...]) -> tuple[tuple[int, float], ...]:
    """The steps with ``PEAK`` replaced by the most likely class of ``problem``'s pi."""
    peak = int(np.argmax(problem.probs))
    out = []
    for k, eta in steps:
        if isinstance(k, str) and k != PEAK:
            raise SpecError(f"squeeze step class {k!r}: use a class index or {PEAK!r}")
        out.append((peak if k == PEAK else int(k), float(eta)))
    return tuple(out)


def run_case(case: str | SqueezeCase, seed: int = AUTHORS_SEED) -> SqueezeResult:
    """One of the authors' cases (``CASES``) on the draws of ``seed``."""
    spec = _case(case)
    problem = draw_problem(spec.init, seed)
    result = run_steps(problem, resolve_steps(problem, spec.steps), case=spec.name, seed=seed)
    result.meta.update(init=spec.init, description=spec.description, feature_norm=float(np.linalg.norm(problem.h)))
    return result


def run_all(seed: int = AUTHORS_SEED) -> list[SqueezeResult]:
    return [run_case(name, seed) for name in CASES]


# --- the claims, each a function of one result -------------------------------------------------


def target_falls(result: SqueezeResult) -> bool:
    """Claim 1: every class given a negative step loses probability."""
    return all(result.after[k] < result.before[k] for k in result.negative_targets)


def argmax_rises(result: SqueezeResult) -> bool:
    """Claim 2: the most likely class not pushed down gains probability."""
    return bool(result.after[result.argmax] > result.before[result.argmax])


def bystanders(result: SqueezeResult) -> np.ndarray:
    """Classes that are neither a step's target nor the argmax: where Claims 3-4 look."""
    keep = np.ones(result.before.size, dtype=bool)
    keep[result.targets] = False
    keep[result.argmax] = False
    return np.flatnonzero(keep)


def fraction_falling(result: SqueezeResult) -> float:
    """Claim 3 as a number: the share of bystander classes whose probability fell."""
    idx = bystanders(result)
    return float(np.mean(result.after[idx] < result.before[idx]))


def argmax_gain(result: SqueezeResult) -> float:
    """Probability mass the argmax gained: how much was squeezed into it."""
    return float(result.after[result.argmax] - result.before[result.argmax])


def kl_after_before(result: SqueezeResult) -> float:
    """KL(pi^{t+1} || pi^t): how far one step moved the whole distribution."""
    return float(np.sum(result.after * (np.log(result.after) - np.log(result.before))))


def risers_are_the_richest(result: SqueezeResult) -> bool:
    """Claim 3B, exact for one negative step: a bystander rises iff its pi is above a threshold.

    For i != k, z_i' = z_i + c pi_i and the normaliser is shared, so alpha_i > 1 exactly when
    pi_i exceeds one cut-off: every class that rises is richer than every class that falls.
    """
    idx = np.append(bystanders(result), result.argmax)
    rose = result.after[idx] > result.before[idx]
    if rose.all() or not rose.any():
        return True
    return bool(result.before[idx][rose].min() > result.before[idx][~rose].max())


def peak_and_valley(seed: int, eta: float = -0.5) -> tuple[SqueezeResult, SqueezeResult]:
    """Claim 4's comparison on one peaky start: a negative step on the most likely class
    (the peak) against the same step on the least likely class (the deepest valley)."""
    problem = draw_problem("peaky", seed)
    pi = problem.probs
    peak, valley = int(np.argmax(pi)), int(np.argmin(pi))
    return (
        run_steps(problem, ((peak, eta),), case="peak", seed=seed),
        run_steps(problem, ((valley, eta),), case="valley", seed=seed),
    )


def _shared_bystanders(peak: SqueezeResult, valley: SqueezeResult) -> np.ndarray:
    """Classes that are bystanders in both runs: neither peak, runner-up nor valley.

    Comparing on one shared set keeps the runner-up (which inherits the peak's mass when the
    peak is pushed down) out of both sides.
    """
    keep = np.ones(peak.before.size, dtype=bool)
    keep[[*peak.targets, peak.argmax, *valley.targets, valley.argmax]] = False
    return np.flatnonzero(keep)


def squeeze_strength(peak: SqueezeResult, valley: SqueezeResult) -> dict[str, tuple[float, float]]:
    """Claim 4's measures, each as (peak value, valley value), on the shared bystanders.

    ``fraction_falling``: share of them whose pi fell; ``mass_change``: their total change of pi;
    ``mean_log_alpha``: their mean log(pi'/pi) (negative = squeezed).
    """
    idx = _shared_bystanders(peak, valley)

    def measures(r: SqueezeResult) -> tuple[float, float, float]:
        return (
            float(np.mean(r.after[idx] < r.before[idx])),
            float(r.after[idx].sum() - r.before[idx].sum()),
            float(np.mean(np.log(r.alpha[idx]))),
        )

    p, v = measures(peak), measures(valley)
    return {name: (p[i], v[i]) for i, name in enumerate(("fraction_falling", "mass_change", "mean_log_alpha"))}


# Claim 4 is in fact exact for single negative steps of equal eta on one start: a bystander's
# log alpha_i = c pi_i - log Z_k with Z_k = sum_j pi_j exp(c pi_j) - pi_k exp(c pi_k)(1 - exp(-c)),
# and Z_k shrinks as pi_k grows. So the lower pi_k, the lower every shared bystander's alpha.


def valley_squeezes_harder(seed: int, eta: float = -0.5) -> dict[str, bool | None]:
    """Claim 4 per measure on one seed: True where the valley step squeezes the shared
    bystanders harder than the peak step, False where softer, None on an exact tie."""
    strength = squeeze_strength(*peak_and_valley(seed, eta))
    verdict: dict[str, bool | None] = {}
    for name, (p, v) in strength.items():
        harder = v > p if name == "fraction_falling" else v < p
        verdict[name] = None if v == p else bool(harder)
    return verdict


# --- to the store ------------------------------------------------------------------------------


def squeeze_observations(result: SqueezeResult) -> list[Observation]:
    """Two observations per case: step 0 holds pi before (alpha = 1), step 1 pi after."""
    classes = list(range(result.before.size))
    meta = {
        "seed": result.seed,
        "steps": [[int(k), float(eta)] for k, eta in result.steps],
        "argmax": result.argmax,
        **result.meta,
    }
    common = dict(kind="squeeze", stage="squeeze", stage_index=0, probe_set="classes",
                  response_type=result.case, example_ids=classes)
    return [
        Observation(step=0, examples_seen=0, values={"prob": result.before.tolist(), "alpha": [1.0] * len(classes)},
                    meta=dict(meta), **common),
        Observation(step=1, examples_seen=1, values={"prob": result.after.tolist(), "alpha": result.alpha.tolist()},
                    meta=dict(meta), **common),
    ]
