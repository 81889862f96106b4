"""The one-step influence matrix (docs/math.md §2, §6; the paper's Appendix C.2 and Figure 3).

From the current model, for each update type u take ONE plain SGD step of learning rate eta on a
small subset, measure Delta log pi(y_o) = log pi_after(y_o|x) - log pi_before(y_o|x) for every
observe type o on the same subset, then put the parameters back bit-exactly. Per (u, o) and
example:

    delta_logp   Delta of the summed sequence log-prob (the quantity the paper plots)
    lbk          |Delta| / (||A_o|| ||G_u||): a lower bound on the eNTK norm (Appendix C.2)
    lbk_signed   Delta / (||A_o|| ||G_u||)

||A_o|| is the probe's ``a_norm`` of the observed response before the step (mean over its tokens
of ||A||_F); ||G_u|| is the mean over the updating tokens of ||dL/dz||, taken by autograd from the
very step that was applied, per example (the batch-mean gradient times B). Because Delta is the
change of a scalar, its norm is its absolute value. LBK is not divided by eta (docs/math.md §6);
eta is stored with every observation.

An update is SFT on a response type (``Update.sft("chosen")``, G = pi - e_y) or any registered
loss on a (y+, y-) pair of types; a loss that needs a reference model gets the current model's
log-probs before the step (pi_ref = pi, as at the start of DPO).
``mode="batch"`` takes one step on the whole subset; ``mode="per_example"`` one step per example,
observed on that example only (the cleanest reading of chi_u and chi_o sharing a prompt). A spec
chooses it with ``probing.influence.mode``; the runner's updates are SFT on the response types
named in ``probing.influence.update_types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ldreg.backends import Backend
from ldreg.dynamics.logprobs import EncodedPair, collate, sequence_logps
from ldreg.dynamics.residual import summarize_residual
from ldreg.dynamics.probes import ForwardPlacement, probe
from ldreg.losses import LossDefinition, LossOutput, SequenceLogps
from ldreg.observations import Observation

INFLUENCE_QUANTITIES = ("delta_logp", "lbk", "lbk_signed", "a_norm", "g_norm")


def _sft(logps: SequenceLogps) -> LossOutput:
    return LossOutput(-logps.chosen.mean())


SFT_UPDATE = LossDefinition(name="sft", compute=_sft, description="-log pi(y|x), the batch mean")


@dataclass(frozen=True)
class Update:
    """One row of the influence matrix: a loss applied to the subset's responses of given types."""

    name: str
    chosen: str
    rejected: str | None = None
    loss: LossDefinition = SFT_UPDATE
    hparams: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def sft(cls, response_type: str) -> "Update":
        """SFT on ``response_type`` used as the target: the paper's "update on type u"."""
        return cls(name=response_type, chosen=response_type)

    def types(self) -> list[str]:
        return [self.chosen] + ([self.rejected] if self.rejected else [])


@dataclass
class InfluenceResult:
    """Per (update, observe) pair the per-example arrays of ``INFLUENCE_QUANTITIES``."""

    updates: list[str]
    observes: list[str]
    values: dict[tuple[str, str], dict[str, np.ndarray]]
    lr: float
    mode: str
    losses: dict[str, str] = field(default_factory=dict)

    def matrix(self, quantity: str = "delta_logp") -> np.ndarray:
        """[updates x observes] of the mean over examples: the paper's heatmap."""
        return np.array([[float(np.mean(self.values[(u, o)][quantity])) for o in self.observes]
                         for u in self.updates])


class _SavedParameters:
    """A copy of the trainable parameters, taken once, copied back after every trial (bit-exact)."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.copies = [p.detach().clone() for p in self.params]
        self.grads = [p.grad for p in self.params]

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved, grad in zip(self.params, self.copies, self.grads):
                p.copy_(saved)
                p.grad = grad


def _sgd_step(model: torch.nn.Module, update: Update, pairs_by_type: Mapping[str, Sequence[EncodedPair]],
              rows: Sequence[int], before: Mapping[str, Mapping[str, np.ndarray]], lr: float,
              where: ForwardPlacement, pad_id: int, params: list[torch.nn.Parameter]) -> np.ndarray:
    """Apply one SGD step of ``update`` on ``rows``; return ||G_u|| per example (mean over tokens)."""
    b = len(rows)
    pairs = [pairs_by_type[t][i] for t in update.types() for i in rows]
    batch = collate(pairs, pad_id).to(where.device)
    for p in params:
        p.grad = None
    with where.autocast():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits.retain_grad()
    logp, n_tokens = sequence_logps(logits, batch.labels)
    ref = {}
    if update.loss.needs_reference:
        ref = {"ref_chosen": _as_tensor(before[update.chosen]["logp_sum"], rows, where.device)}
        if update.rejected:
            ref["ref_rejected"] = _as_tensor(before[update.rejected]["logp_sum"], rows, where.device)
    logps = SequenceLogps(chosen=logp[:b], chosen_tokens=n_tokens[:b],
                          rejected=logp[b:] if update.rejected else None,
                          rejected_tokens=n_tokens[b:] if update.rejected else None, **ref)
    output = update.loss(logps, **update.hparams)
    output.loss.backward()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
    split = update.rejected is not None
    residual = summarize_residual(logits.grad[:b], batch.labels[:b], logits.grad[b:] if split else None,
                                  batch.labels[b:] if split else None, output=output, scale=b)
    return residual.token_norm.cpu().numpy()


def _as_tensor(values: np.ndarray, rows: Sequence[int], device) -> torch.Tensor:
    return torch.tensor(np.asarray(values)[list(rows)], dtype=torch.float32, device=device)


def influence(model: torch.nn.Module, pairs_by_type: Mapping[str, Sequence[EncodedPair]],
              example_ids: Sequence[int], *, updates: Sequence[Update | str], observes: Sequence[str],
              lr: float, mode: str = "batch", backend: Backend | None = None, dtype: torch.dtype | None = None,
              max_tokens_per_batch: int = 16384, pad_id: int = 0) -> InfluenceResult:
    """The one-step influence of each update on each observe type over the given subset.

    ``updates`` may name response types (SFT on them) or be ``Update`` objects. The model's
    parameters, gradients and train/eval mode are exactly as before when this returns.
    """
    if mode not in ("batch", "per_example"):
        raise ValueError(f"influence mode must be 'batch' or 'per_example', not {mode!r}")
    updates = [Update.sft(u) if isinstance(u, str) else u for u in updates]
    needed = list(dict.fromkeys([*observes, *(t for u in updates for t in u.types())]))
    missing = [t for t in needed if t not in pairs_by_type]
    if missing:
        raise ValueError(f"response types {missing} are used by the influence matrix but not in the probing "
                         f"set; it has {sorted(pairs_by_type)}")
    where = ForwardPlacement(model, backend, dtype)
    probe_kw = dict(backend=backend, dtype=dtype, max_tokens_per_batch=max_tokens_per_batch, pad_id=pad_id)
    before = probe(model, {t: pairs_by_type[t] for t in needed}, example_ids, **probe_kw)
    n = len(example_ids)
    trials = [list(range(n))] if mode == "batch" else [[i] for i in range(n)]
    saved = _SavedParameters(model)
    was_training = model.training
    model.eval()
    values: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    try:
        for update in updates:
            after = {o: np.empty(n) for o in observes}
            g_norm = np.empty(n)
            for rows in trials:
                g_norm[rows] = _sgd_step(model, update, pairs_by_type, rows, before, lr, where, pad_id, saved.params)
                observed = probe(model, {o: [pairs_by_type[o][i] for i in rows] for o in observes},
                                 [example_ids[i] for i in rows], **probe_kw)
                for o in observes:
                    after[o][rows] = observed[o]["logp_sum"]
                saved.restore()
            for o in observes:
                delta = after[o] - before[o]["logp_sum"]
                scale = before[o]["a_norm"] * g_norm
                values[(update.name, o)] = {"delta_logp": delta, "lbk": np.abs(delta) / scale,
                                            "lbk_signed": delta / scale, "a_norm": before[o]["a_norm"],
                                            "g_norm": g_norm.copy()}
    finally:
        saved.restore()
        model.train(was_training)
    return InfluenceResult([u.name for u in updates], list(observes), values, lr, mode,
                           {u.name: u.loss.name for u in updates})


def influence_observations(result: InfluenceResult, example_ids: Sequence[int], *, step: int, examples_seen: int,
                           stage: str, stage_index: int, probe_set: str) -> list[Observation]:
    """One kind-"influence" Observation per (update, observe) pair, ``update_type`` set."""
    return [
        Observation(kind="influence", step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
                    probe_set=probe_set, response_type=o, update_type=u, example_ids=[int(i) for i in example_ids],
                    values={q: [float(v) for v in arrays[q]] for q in INFLUENCE_QUANTITIES},
                    meta={"lr": result.lr, "mode": result.mode, "loss": result.losses.get(u)})
        for (u, o), arrays in result.values.items()
    ]
