"""The digits eNTK of the paper's Figure 1, small enough to compute exactly on a CPU.

A LeNet-like CNN is trained on scikit-learn's bundled 8x8 digits (1797 images, no download) with
SGD and momentum 0.9, standing in for the authors' LeNet on a 2000-image MNIST subset. Then:

- the exact eNTK over logits, K(x_o, x_u) = J(x_o) J(x_u)^T (10 x 10 per pair, J the Jacobian
  of the logits in the parameters), on a class-balanced subset; its Frobenius norm averaged over
  all pairs of distinct examples per (observed class, updated class) gives Figure 1(d)'s 10 x 10
  matrix;
- the one-step influence: one plain SGD step (no momentum) on the cross-entropy of one example
  of class u, and the change of log p(label | x_o) (and of log p(u | x_o)) on examples of the
  same class, of the class with the largest eNTK to u ("similar") and with the smallest
  ("dissimilar").

The Jacobians and the Gram come from the engine's eNTK (``ldreg.dynamics.entk``), the same code
that computes the LLM runs' Grams, here over the 10 logits in float64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ldreg.dynamics.entk import block_gram, per_example_jacobians
from ldreg.errors import SpecError
from ldreg.observations import Observation

NUM_CLASSES = 10


class LeNet(nn.Module):
    """Two 3x3 conv + max-pool stages and two linear layers: about 3.4k parameters on 8x8 input."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class DigitsData:
    """Images scaled to [0, 1] as (N, 1, 8, 8), labels, and a stratified train/test split."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return DigitsData(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def train(data: DigitsData, *, seed: int = 0, lr: float = 0.05, epochs: int = 12, batch_size: int = 32) -> LeNet:
    """SGD with momentum 0.9 (the authors' optimiser); these defaults reach ~95% in a few seconds."""
    torch.manual_seed(seed)
    model = LeNet()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean())


def balanced_subset(y: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` examples of every class, sorted by class."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(y == c).flatten()
        if len(members) < per_class:
            raise SpecError(f"digits subset: class {c} has {len(members)} examples, fewer than per_class={per_class}; lower per_class")
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks)


def _logits(forward, x: Tensor) -> Tensor:
    return forward(x).squeeze(0)


def entk_norms(model: nn.Module, x: Tensor) -> Tensor:
    """||K(x_i, x_j)||_F for every pair, K = J_i J_j^T over the 10 logits, in float64: (N, N)."""
    jacobians = per_example_jacobians(copy.deepcopy(model).double(), _logits, [(xi,) for xi in x.double()])
    return block_gram(jacobians).flatten(2).norm(dim=2)


def class_entk(norms: Tensor, labels: Tensor) -> np.ndarray:
    """Mean ||K|| per (observed class, updated class), self-pairs left out: Figure 1(d)."""
    off_self = ~torch.eye(len(labels), dtype=torch.bool)
    out = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for o in range(NUM_CLASSES):
        for u in range(NUM_CLASSES):
            block = (labels[:, None] == o) & (labels[None, :] == u) & off_self
            out[o, u] = float(norms[block].mean())
    return out


def similar_and_dissimilar(matrix: np.ndarray, u: int) -> tuple[int, int]:
    """The other class with the largest and the smallest mean eNTK to class u."""
    row = matrix[u].copy()
    row[u] = np.nan
    return int(np.nanargmax(row)), int(np.nanargmin(row))


def one_step_influence(model: nn.Module, x_u: Tensor, y_u: int, x_obs: Tensor, y_obs: Tensor, lr: float) -> dict[str, np.ndarray]:
    """Delta log p after one SGD step on (x_u, y_u), in float64 so tiny changes are exact enough.

    ``own_label``: change of log p(y_o | x_o); ``update_class``: change of log p(y_u | x_o).
    """
    model = copy.deepcopy(model).double()
    x_obs = x_obs.double()
    with torch.no_grad():
        before = torch.log_softmax(model(x_obs), dim=1)
    loss = nn.functional.cross_entropy(model(x_u.double().unsqueeze(0)), torch.tensor([y_u]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= lr * g
        after = torch.log_softmax(model(x_obs), dim=1)
    delta = after - before
    rows = torch.arange(len(y_obs))
    return {"own_label": delta[rows, y_obs].numpy(), "update_class": delta[:, y_u].numpy()}


@dataclass
class DigitsResult:
    """Everything Figure 1 needs, as plain data."""

    seed: int
    test_accuracy: float
    class_entk: np.ndarray  # (10, 10): rows observed class, columns updated class
    update_class: int
    update_index: int  # index into the training split
    similar_class: int
    dissimilar_class: int
    influence: dict[str, dict[str, np.ndarray]]  # group -> {"ids", "own_label", "update_class"}
    meta: dict = field(default_factory=dict)

    def mean_influence(self, quantity: str = "own_label") -> dict[str, float]:
        return {g: float(np.mean(v[quantity])) for g, v in self.influence.items()}


def run(
    seed: int = 0,
    *,
    per_class: int = 20,
    update_class: int = 4,
    influence_lr: float = 0.05,
    epochs: int = 12,
) -> DigitsResult:
    """Train, compute the class eNTK on ``per_class`` training examples per class, and measure one
    update's influence on the test examples of the same, the similar and the dissimilar class."""
    if not 0 <= update_class < NUM_CLASSES:
        raise SpecError(f"digits update_class={update_class} is not a digit; use 0..9")
    data = load_digits_split(seed)
    model = train(data, seed=seed, epochs=epochs)
    subset = balanced_subset(data.y_train, per_class, seed)
    matrix = class_entk(entk_norms(model, data.x_train[subset]), data.y_train[subset])
    similar, dissimilar = similar_and_dissimilar(matrix, update_class)

    # the update example: the first training example of class u outside the eNTK subset is fine;
    # any one will do, the observed examples come from the held-out split
    candidates = torch.nonzero(data.y_train == update_class).flatten()
    update_index = int(candidates[0])
    influence = {}
    for group, cls in (("same_class", update_class), ("similar_class", similar), ("dissimilar_class", dissimilar)):
        ids = torch.nonzero(data.y_test == cls).flatten()
        delta = one_step_influence(
            model, data.x_train[update_index], update_class, data.x_test[ids], data.y_test[ids], influence_lr
        )
        influence[group] = {"ids": ids.numpy(), "observed_class": cls, **delta}
    return DigitsResult(
        seed=seed,
        test_accuracy=accuracy(model, data.x_test, data.y_test),
        class_entk=matrix,
        update_class=update_class,
        update_index=update_index,
        similar_class=similar,
        dissimilar_class=dissimilar,
        influence=influence,
        meta={"per_class": per_class, "influence_lr": influence_lr, "epochs": epochs,
              "entk": "Frobenius norm of the 10x10 logit eNTK, mean over pairs of distinct examples"},
    )


def digits_observations(result: DigitsResult) -> list[Observation]:
    """One "entk_class" observation (the 10x10 matrix flattened row-major in values["gram"], as
    the "entk" kind stores Gram matrices) and one per influence group."""
    common = dict(kind="digits", step=0, examples_seen=0, stage="digits", stage_index=0)
    meta = {"seed": result.seed, "test_accuracy": result.test_accuracy, **result.meta}
    out = [
        Observation(
            probe_set="digits_train_subset", response_type="entk_class", example_ids=list(range(NUM_CLASSES)),
            values={"gram": result.class_entk.flatten().tolist()},
            meta={**meta, "rows": "observed class", "cols": "updated class"}, **common,
        )
    ]
    for group, v in result.influence.items():
        out.append(
            Observation(
                probe_set="digits_test", response_type=group, update_type=f"digit_{result.update_class}",
                example_ids=[int(i) for i in v["ids"]],
                values={"dlogp_own_label": v["own_label"].tolist(), "dlogp_update_class": v["update_class"].tolist()},
                meta={**meta, "observed_class": int(v["observed_class"]), "update_index": result.update_index},
                **common,
            )
        )
    return out
