"""The training loop: stages in order, each a loss plugin, with probes on a schedule.

The trainer knows nothing of MongoDB or Sacred. Observations leave through an ObservationSink;
scalar metrics through a ``log_scalar(name, value, step)`` callable. That keeps it testable
with a list sink and usable from a notebook.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ldreg.backends import Backend
from ldreg.dynamics.logprobs import Batch, EncodedPair, collate, model_sequence_logps, sequence_logps
from ldreg.dynamics.residual import summarize_residual
from ldreg.errors import LdregError
from ldreg.losses import LossDefinition, NonFiniteLoss, SequenceLogps, checked_call  # noqa: F401 (NonFiniteLoss re-exported)
from ldreg.models import frozen_copy
from ldreg.observations import Observation, ObservationSink
from ldreg.spec import StageSpec

LogScalar = Callable[[str, float, int], None]


@dataclass
class EncodedExample:
    """A training example, tokenised: (x, y+) and (x, y-); or, from unpaired data, (x, y) in
    ``chosen`` with ``rejected`` None and ``desirable`` its label."""

    id: int
    chosen: EncodedPair
    rejected: EncodedPair | None
    chosen_prob: float | None = None
    desirable: bool | None = None


@dataclass
class Clock:
    """Where training is: optimiser steps and examples seen, both counted across stages."""

    step: int = 0
    examples_seen: int = 0
    stage: str = ""
    stage_index: int = 0


class Observer(Protocol):
    """Called on the probe schedule; emits observations of the current model to a sink."""

    def __call__(self, model: torch.nn.Module, clock: Clock) -> None: ...


@dataclass
class ProbeSchedule:
    """Probe every ``every`` examples seen, at the start of each stage, and at the very end."""

    every: int

    def crossed(self, before: int, after: int) -> bool:
        return after // self.every > before // self.every


def _optimizer(stage: StageSpec, params) -> torch.optim.Optimizer:
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr)
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr)
    return torch.optim.RMSprop(params, lr=stage.lr)


def _warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / steps) if steps else 1.0)


@dataclass
class Trainer:
    model: torch.nn.Module
    backend: Backend
    pad_id: int
    losses: dict[str, LossDefinition]
    observer: Observer | None = None
    log_scalar: LogScalar = lambda name, value, step: None
    sink: ObservationSink | None = None
    probe_every: int = 100
    seed: int = 0
    progress: bool = True
    # SPIN: (opponent, examples, global step) -> y_gen; seeded by the step, so a resume needs no sampler state
    generate_rejected: Callable[[torch.nn.Module, Sequence[EncodedExample], int], list[EncodedPair]] | None = None
    checkpoint_every: int = 0
    checkpointer: Callable[[dict], None] | None = None
    autocast_dtype: torch.dtype | None = None  # mixed precision of the forward (bf16 on GPUs)
    reference_dtype: torch.dtype | None = None  # the frozen reference's weights (the authors: fp16)
    clock: Clock = field(default_factory=Clock)
    _observed_at: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def run(self, stages: Sequence[StageSpec], data: Sequence[EncodedExample], resume: dict | None = None) -> Clock:
        """Train every stage in order; with ``resume`` (a checkpoint), continue exactly where it was."""
        schedule = ProbeSchedule(self.probe_every)
        if resume is not None:
            self.clock = Clock(**resume["clock"])
            self.model.load_state_dict(resume["model"])
        for index, stage in enumerate(stages):
            if resume is not None and index < resume["stage_index"]:
                continue
            mid_stage = resume is not None and index == resume["stage_index"]
            self.clock.stage, self.clock.stage_index = stage.name or stage.loss, index
            if not mid_stage:
                self._observe()
            self._run_stage(stage, data, schedule, resume if mid_stage else None)
        self._observe()
        return self.clock

    # ------------------------------------------------------------------ one stage

    def _run_stage(self, stage: StageSpec, data: Sequence[EncodedExample], schedule: ProbeSchedule,
                   resume: dict | None = None) -> None:
        loss_def = self.losses[stage.loss]
        device = self.backend.device()
        reference = self._reference(stage) if loss_def.needs_reference else None
        optimizer = _optimizer(stage, [p for p in self.model.parameters() if p.requires_grad])
        scheduler = _warmup(optimizer, stage.warmup_steps)
        order = self._order(len(data), stage.epochs, self.clock.stage_index)
        batches = [order[i : i + stage.batch_size] for i in range(0, len(order), stage.batch_size)]
        start = 0
        loss_state = loss_def.new_state() if loss_def.new_state is not None else None  # e.g. BCO's running mean
        if resume is not None:
            start = resume["batch"]
            if loss_state is not None and resume.get("loss_state") is not None:
                loss_state.load_state_dict(resume["loss_state"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if reference is not None:
                reference.load_state_dict(resume["reference"])
            restore_rng(resume["rng"])
        bar = tqdm(batches, desc=f"stage {self.clock.stage}", unit="step", disable=not self.progress, leave=False,
                   initial=start, total=len(batches))
        for position in range(start, len(batches)):
            examples = [data[i] for i in batches[position]]
            metrics = self._step(loss_def, stage, examples, reference, optimizer, device, loss_state)
            scheduler.step()
            before = self.clock.examples_seen
            self.clock.step += 1
            self.clock.examples_seen += len(examples)
            metrics["lr"] = scheduler.get_last_lr()[0]
            metrics["stage_index"] = self.clock.stage_index
            for name, value in metrics.items():  # TRL's names; the step is global across stages
                self.log_scalar(name, value, self.clock.step)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            if schedule.crossed(before, self.clock.examples_seen):
                self._observe()
            if self.checkpointer and self.checkpoint_every and self.clock.step % self.checkpoint_every == 0:
                self.checkpointer(self._state(position + 1, optimizer, scheduler, reference, loss_state))
        bar.close()
        del reference

    def _reference(self, stage: StageSpec) -> torch.nn.Module:
        """The frozen reference: the policy as this stage starts, or a model loaded by name/path."""
        if stage.reference == "stage_start":
            return frozen_copy(self.model, self.reference_dtype)
        from ldreg.models import load_model

        return frozen_copy(load_model(stage.reference, self.backend.device()), self.reference_dtype)

    def _state(self, next_batch: int, optimizer, scheduler, reference, loss_state=None) -> dict:
        """Everything needed to continue bit-for-bit: weights, optimiser, schedule, data position, RNG,
        and a stateful loss's state (``LossDefinition.new_state``)."""
        return {"clock": dict(vars(self.clock)), "stage_index": self.clock.stage_index, "batch": next_batch,
                "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "reference": reference.state_dict() if reference is not None else None, "rng": rng_state(),
                "loss_state": loss_state.state_dict() if loss_state is not None else None}

    def _order(self, n: int, epochs: float, stage_index: int) -> list[int]:
        """Seeded shuffles, one per epoch; a fractional epoch takes a prefix of the last one."""
        gen = torch.Generator().manual_seed(self.seed * 1000 + stage_index)
        full = math.floor(epochs)
        order: list[int] = []
        for _ in range(full):
            order += torch.randperm(n, generator=gen).tolist()
        rest = round((epochs - full) * n)
        if rest:
            order += torch.randperm(n, generator=gen).tolist()[:rest]
        return order

    def _step(self, loss_def: LossDefinition, stage: StageSpec, examples: Sequence[EncodedExample],
              reference: torch.nn.Module | None, optimizer: torch.optim.Optimizer, device,
              loss_state=None) -> dict[str, float]:
        self.model.train()
        chosen = [e.chosen for e in examples]
        rejected: list[EncodedPair] | None = None
        unpaired = examples[0].desirable is not None
        if unpaired and not loss_def.accepts_unpaired:
            raise LdregError(f"loss {loss_def.name!r} needs pairs, but the data is unpaired (prompt/completion/label); "
                             f"use a loss that accepts unpaired data (kto, bco)")
        if loss_def.needs_rejected and not unpaired:
            if loss_def.rejected_source == "generated":
                if self.generate_rejected is None:
                    raise LdregError(f"loss {loss_def.name!r} needs generated responses, but no generator is set")
                rejected = self.generate_rejected(reference if reference is not None else self.model, examples,
                                                  self.clock.step)
            else:
                rejected = [e.rejected for e in examples]
        pairs = chosen + (rejected or [])
        batch = collate(pairs, self.pad_id).to(device)
        with self.backend.autocast(self.autocast_dtype):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits.retain_grad()
        logps, counts = sequence_logps(logits, batch.labels)
        b = len(chosen)
        inputs = SequenceLogps(chosen=logps[:b], chosen_tokens=counts[:b])
        if rejected is not None:
            inputs.rejected, inputs.rejected_tokens = logps[b:], counts[b:]
        if reference is not None:
            # inference mode, logits at response positions only; the clone is an ordinary constant tensor.
            # The reference computes in the precision it is held in (fp16 weights under bf16 autocast
            # would mix dtypes in layer norm); without a reference dtype, in the policy's.
            with torch.inference_mode(), self.backend.autocast(self.reference_dtype or self.autocast_dtype):
                ref_logps, _ = model_sequence_logps(reference, batch)
            ref_logps = ref_logps.clone()
            inputs.ref_chosen = ref_logps[:b]
            if rejected is not None:
                inputs.ref_rejected = ref_logps[b:]
        if unpaired:
            inputs.desirable = torch.tensor([bool(e.desirable) for e in examples], device=device)
        if loss_def.wants_mismatched(stage.params):
            inputs.mismatched, inputs.ref_mismatched = self._mismatched(pairs, reference, device)
        probs = [e.chosen_prob for e in examples]
        if all(p is not None for p in probs):  # soft win probabilities, where the data has them
            inputs.chosen_prob = torch.tensor(probs, dtype=torch.float32, device=device)
        # the one guard for loss plugins: a LossOutput, 0-dim, finite, with grad, or a message naming the
        # plugin, stage and step; a NaN is blamed on the model only when its log-probs were already NaN
        out = checked_call(loss_def, inputs, stage.params, where=f"stage {self.clock.stage!r}, step {self.clock.step + 1}",
                           diverged=f"lower the learning rate ({stage.lr}) or check the data", state=loss_state)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), stage.max_grad_norm if stage.max_grad_norm else float("inf")
        )
        optimizer.step()
        metrics = {"loss": float(out.loss.detach()), "grad_norm": float(grad_norm), **out.metrics}
        metrics.update(self._residual(logits.grad, batch, b, [e.id for e in examples], out))
        return metrics

    def _mismatched(self, pairs: Sequence[EncodedPair], reference: torch.nn.Module | None,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
        """TRL's KL pairs (KTO): prompt i with the completion of i-1, the batch's completions rotated
        by one; summed log-probs of the policy (no grad, as TRL) and of the reference. A completion
        is cut so that no mismatched sequence is longer than the batch's longest."""
        if reference is None:
            raise LdregError("mismatched pairs need a reference model; declare needs_reference=True on the loss")
        longest = max(len(p) for p in pairs)
        shifted = [EncodedPair(p.prompt_ids, q.response_ids[: max(1, longest - len(p.prompt_ids))])
                   for p, q in zip(pairs, [pairs[-1], *pairs[:-1]])]
        batch = collate(shifted, self.pad_id).to(device)
        with torch.no_grad(), self.backend.autocast(self.autocast_dtype):
            policy, _ = model_sequence_logps(self.model, batch)
        with torch.inference_mode(), self.backend.autocast(self.reference_dtype or self.autocast_dtype):
            ref, _ = model_sequence_logps(reference, batch)
        return policy.detach(), ref.clone()

    def _residual(self, grad: torch.Tensor | None, batch: Batch, n_chosen: int, ids: list[int],
                  output) -> dict[str, float]:
        """||G|| of the updating batch from dL/dz, which backward already computed (no extra pass).

        Reported per example (the batch mean's 1/B undone), with its split between y+ and y-.
        """
        if grad is None:
            return {}
        split = grad.shape[0] > n_chosen
        res = summarize_residual(grad[:n_chosen], batch.labels[:n_chosen],
                                 grad[n_chosen:] if split else None, batch.labels[n_chosen:] if split else None,
                                 output=output, scale=n_chosen)
        if self.sink is not None:
            self.sink.emit(Observation(
                kind="batch", step=self.clock.step + 1, examples_seen=self.clock.examples_seen + len(ids),
                stage=self.clock.stage, stage_index=self.clock.stage_index, probe_set="update",
                response_type="chosen", example_ids=ids, values=res.values(),
            ))
        metrics = {"residual/g_norm": float(res.token_norm.mean())}
        if split:
            metrics["residual/chosen_share"] = float(res.chosen_fraction.nanmean())
        return metrics

    def _observe(self) -> None:
        """Probe now, unless this stage already probed at this step (a stage ending on the probe
        schedule must not probe, emit and count its final step twice)."""
        where = (self.clock.stage_index, self.clock.step)
        if self.observer is not None and where != self._observed_at:
            self._observed_at = where
            self.observer(self.model, self.clock)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(backend: Backend, seed: int) -> None:
    """Python, numpy, torch and the device: one seed, one run."""
    backend.seed(seed)
    random.seed(seed)
    np.random.seed(seed)
