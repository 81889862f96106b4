"""The exact empirical NTK between examples, from per-example gradients (docs/math.md §2, §3).

K(chi_o, chi_u) of Proposition 1 is V x V per pair of tokens: (dz_o/dtheta)(dz_u/dtheta)^T. For a
language model that is infeasible, so the Gram here is between SCALARS per example: for a
sequence, s(chi) = log pi(y|x) (the summed response log-prob), and

    K_ij = <d s(chi_i)/d theta, d s(chi_j)/d theta>

which is the full K contracted with the A and e_y terms on both sides (the quantity that
actually moves log pi in Proposition 1). The core is generic: ``per_example_grads`` and ``gram``
for one scalar per example, ``per_example_jacobians`` and ``block_gram`` for a vector of outputs
(the digits classifier passes its 10 logits and gets the V x V kernel per pair).

How: ``sequence_entk`` takes one autograd backward per example (``method="loop"``: any model,
any sequence lengths); for examples of one shape ``per_example_grads`` can vmap ``torch.func.grad``
instead, and ``per_example_jacobians`` always vmaps ``torch.func.jacrev``.

Size: the full gradient is exact but costs n x P memory; above ``max_params`` trainable
parameters only the output layer's gradient is used (``mode="last_layer"``), optionally reduced
further by a seeded Gaussian random projection (Johnson-Lindenstrauss: the Gram is preserved in
expectation). A spec reaches each of these through ``probing.entk`` (``mode``, ``max_params``,
``projection_dim``; the projection is seeded by the run's seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, grad, jacrev, vmap

from ldreg.dynamics.logprobs import EncodedPair, collate, sequence_logps
from ldreg.observations import Observation

DEFAULT_MAX_PARAMS = 1_000_000

# loss_fn(forward, *sample) -> scalar; ``forward`` runs the model, each sample tensor has batch size 1.
ScalarFn = Callable[..., Tensor]


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection: an HF model's output embeddings, else the last Linear module."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no output embeddings and no Linear layer; "
                             "pass param_names to per_example_grads")
        head = linears[-1]
    return head


def parameter_names(model: torch.nn.Module, mode: str) -> list[str]:
    """Names of the trainable parameters a mode differentiates: "full" or "last_layer"."""
    if mode == "full":
        return [n for n, p in model.named_parameters() if p.requires_grad]
    if mode == "last_layer":
        head = {id(p) for p in output_layer(model).parameters()}
        return [n for n, p in model.named_parameters() if id(p) in head]
    raise ValueError(f"eNTK mode must be 'full' or 'last_layer', not {mode!r}")


def count_parameters(model: torch.nn.Module, names: Sequence[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def per_example_grads(model: torch.nn.Module, loss_fn: ScalarFn, inputs: Sequence[tuple[Tensor, ...]], *,
                      param_names: Sequence[str] | None = None, method: str = "auto") -> Tensor:
    """Gradients [n, P] (fp32, flattened in ``param_names`` order) of one scalar per example.

    ``inputs``: one tuple of tensors per example, without a batch dimension. ``method``: "vmap"
    (torch.func vmap over grad: all examples must share shapes), "loop" (autograd per example:
    any shapes, any model), or "auto" (vmap where shapes agree and the model allows it, else loop).
    """
    names = list(param_names) if param_names is not None else parameter_names(model, "full")
    if not inputs:
        return torch.zeros(0, count_parameters(model, names))
    same_shape = all(tuple(t.shape for t in ex) == tuple(t.shape for t in inputs[0]) for ex in inputs)
    if method == "vmap" or (method == "auto" and same_shape):
        try:
            return _vmap_grads(model, loss_fn, inputs, names)
        except Exception:
            if method == "vmap":
                raise
    return _loop_grads(model, loss_fn, inputs, names)


def per_example_jacobians(model: torch.nn.Module, output_fn: ScalarFn, inputs: Sequence[tuple[Tensor, ...]], *,
                          param_names: Sequence[str] | None = None) -> Tensor:
    """Jacobians [n, K, P] of K outputs per example (e.g. a classifier's logits), for the V x V eNTK.

    ``output_fn(forward, *sample)`` returns a vector [K]; examples must share shapes (vmap over
    jacrev). The dtype is the model's, at least fp32 (a float64 model gives float64 Jacobians).
    """
    names = list(param_names) if param_names is not None else parameter_names(model, "full")
    return _vmap_grads(model, output_fn, inputs, names, transform=jacrev)


def _vmap_grads(model, loss_fn: ScalarFn, inputs, names: list[str], transform=grad) -> Tensor:
    params = dict(model.named_parameters())
    trainable = {n: params[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in params.items() if n not in trainable}
    frozen.update(dict(model.named_buffers()))

    def scalar(theta, *sample):
        def forward(*args, **kwargs):
            return functional_call(model, {**frozen, **theta}, args, kwargs)

        return loss_fn(forward, *(t.unsqueeze(0) for t in sample))

    stacked = [torch.stack([ex[k] for ex in inputs]) for k in range(len(inputs[0]))]
    grads = vmap(transform(scalar), in_dims=(None, *([0] * len(stacked))))(trainable, *stacked)
    if transform is grad:
        return torch.cat([grads[n].reshape(len(inputs), -1).float() for n in names], dim=1)
    outputs = grads[names[0]].shape[1]  # jacrev: [n, K, *parameter shape]
    return torch.cat([_at_least_fp32(grads[n].reshape(len(inputs), outputs, -1)) for n in names], dim=2)


def _at_least_fp32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _loop_grads(model, loss_fn: ScalarFn, inputs, names: list[str]) -> Tensor:
    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    flags = [p.requires_grad for p in wanted]
    for p in wanted:
        p.requires_grad_(True)
    rows = []
    try:
        for ex in inputs:
            value = loss_fn(model, *(t.unsqueeze(0) for t in ex))
            grads = torch.autograd.grad(value, wanted, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for g, p in zip(grads, wanted)]))
    finally:
        for p, flag in zip(wanted, flags):
            p.requires_grad_(flag)
    return torch.stack(rows)


def gram(grads: Tensor) -> Tensor:
    """K = grads grads^T in float64: symmetric, PSD up to rounding."""
    g = grads.double()
    return g @ g.T


def block_gram(jacobians: Tensor) -> Tensor:
    """K[i, j] = J_i J_j^T for Jacobians [n, K, P]: the eNTK as [n, n, K, K] (``gram`` is K = 1)."""
    return torch.einsum("iap,jbp->ijab", jacobians, jacobians)


def random_projection(grads: Tensor, dim: int, seed: int = 0, chunk: int = 1 << 16) -> Tensor:
    """grads [n, P] times a seeded Gaussian [P, dim] / sqrt(dim), generated in chunks of P."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.zeros(grads.shape[0], dim, dtype=torch.float64)
    for start in range(0, grads.shape[1], chunk):
        block = grads[:, start:start + chunk].double().cpu()
        out += block @ torch.randn(block.shape[1], dim, generator=gen, dtype=torch.float64)
    return out / dim**0.5


@dataclass
class EntkResult:
    """The Gram matrix [n, n], the mode used, and how many parameters it differentiated."""

    gram: np.ndarray
    mode: str
    n_params: int
    projection_dim: int | None = None


def _sequence_logp(forward, input_ids: Tensor, labels: Tensor) -> Tensor:
    return sequence_logps(forward(input_ids=input_ids).logits, labels)[0].sum()


def sequence_entk(model: torch.nn.Module, pairs: Sequence[EncodedPair], *, mode: str = "auto",
                  max_params: int = DEFAULT_MAX_PARAMS, projection_dim: int | None = None,
                  seed: int = 0) -> EntkResult:
    """eNTK Gram of s = log pi(y|x) between the given (prompt, response) pairs, in fp32, eval mode.

    ``mode="auto"``: "full" when the model has at most ``max_params`` trainable parameters, else
    "last_layer". ``projection_dim`` adds a random projection (mode gets a "+projection" suffix).
    """
    if mode == "auto":
        mode = "full" if count_parameters(model, parameter_names(model, "full")) <= max_params else "last_layer"
    names = parameter_names(model, mode)
    device = next(model.parameters()).device
    inputs = []
    for pair in pairs:
        batch = collate([pair], pad_id=0)
        inputs.append((batch.input_ids[0].to(device), batch.labels[0].to(device)))
    was_training = model.training
    model.eval()
    try:
        grads = per_example_grads(model, _sequence_logp, inputs, param_names=names, method="loop")
    finally:
        model.train(was_training)
    label = mode
    if projection_dim:
        grads, label = random_projection(grads, projection_dim, seed), f"{mode}+projection"
    return EntkResult(gram(grads).cpu().numpy(), label, count_parameters(model, names), projection_dim)


def entk_observation(result: EntkResult, example_ids: Sequence[int], *, step: int, examples_seen: int,
                     stage: str, stage_index: int, probe_set: str, response_type: str) -> Observation:
    """A kind-"entk" Observation: the Gram flattened row-major in ``values["gram"]``."""
    n = result.gram.shape[0]
    return Observation(kind="entk", step=step, examples_seen=examples_seen, stage=stage, stage_index=stage_index,
                       probe_set=probe_set, response_type=response_type, example_ids=[int(i) for i in example_ids],
                       values={"gram": [float(v) for v in result.gram.reshape(-1)]},
                       meta={"n": n, "mode": result.mode, "n_params": result.n_params,
                             "scalar": "log pi(y|x)", "projection_dim": result.projection_dim})
