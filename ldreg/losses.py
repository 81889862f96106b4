"""The loss contract: a loss is a pure function of per-sequence log-probabilities.

As in TRL's loss table, a loss plugin never sees a model. The engine hands it the summed
response log-probabilities of the policy (and of the frozen reference, when the loss needs one)
and the loss returns a scalar plus the quantities users expect logged, named as TRL names them
(rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen,
logps/rejected). Because the loss is a differentiable function of log-probabilities that the
engine computed from logits z, the engine derives the paper's residual term G = dL/dz by
autograd for any registered loss.

Because a loss is third-party code on the training path, this module also holds its contract's
checks: declared hyper-parameter constraints (``check_params``), the declaration checked at
registration (``declaration_problems``), and every call checked (``checked_call``), each failure
one message naming the plugin.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor

from ldreg.errors import LdregError, PluginError, closest


@dataclass
class SequenceLogps:
    """What a loss sees for one batch: sums over response tokens, each of shape [B].

    ``rejected`` is y- from the data, or y_gen for losses whose rejected response is generated
    (SPIN). ``ref_*`` are the frozen reference model's values. ``chosen_prob`` is a soft win
    probability P(y+ > y-) where the data carries one (SPPO).

    Unpaired data (TRL's prompt/completion/label rows, for losses with ``accepts_unpaired``):
    ``desirable`` (bool [B]) is set, ``chosen``/``ref_chosen`` hold each row's one completion
    and ``rejected``/``ref_rejected`` are None. ``mismatched``/``ref_mismatched`` are the
    summed log-probs of TRL's mismatched pairs (prompt i with the completion of i-1 in the
    batch, without grad; for losses whose ``needs_mismatched`` says so): KTO's KL estimate.
    """

    chosen: Tensor
    chosen_tokens: Tensor
    rejected: Tensor | None = None
    rejected_tokens: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_prob: Tensor | None = None
    desirable: Tensor | None = None
    mismatched: Tensor | None = None
    ref_mismatched: Tensor | None = None


@dataclass
class LossOutput:
    """A scalar to minimise and detached per-batch metrics (TRL's names) to log."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


LossFunction = Callable[..., LossOutput]

# A declared constraint on one hyper-parameter: a short rule in text ("> 0", ">= 0", "[0, 0.5)",
# "{0, 1}", or for a string parameter a choice "{sum, mean}") or a callable taking the value and
# returning what is wrong with it (a phrase such as "must be a power of 2") or None when it is fine.
ConstraintRule = Union[str, Callable[[Any], Optional[str]]]

# A hyper-parameter's type is its default's: a spec gives the same type, so a switch is written
# true/false rather than 1.0/0.0, a count 3 rather than 3.0, and a choice as a string.
HyperValue = Union[bool, int, float, str]


def param_type(default: object) -> type:
    """The declared type of a hyper-parameter: bool, int, float or str, read from its default."""
    for kind in (bool, int, float, str):  # bool first: True is also an int
        if isinstance(default, kind):
            return kind
    raise ValueError(f"a hyper-parameter's default is a bool, int, float or str; got {default!r}")

_COMPARISONS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
_INTERVAL = re.compile(r"^([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])$")
_COMPARISON = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")
_SET = re.compile(r"^\{(.*)\}$")


def _number(text: str) -> float:
    value = float(text.strip())  # accepts inf, -inf
    if math.isnan(value):
        raise ValueError("nan is not a bound")
    return value


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and math.isfinite(value) else repr(float(value))


def parse_constraint(rule: ConstraintRule, kind: type = float) -> Callable[[Any], str | None]:
    """A checker for one declared rule: value -> None, or the problem ("must be > 0").

    ``kind`` is the parameter's type: for ``str`` the only text rule is a choice ("{sum, mean}").
    Raises ValueError for a rule it cannot read, so a malformed declaration fails at registration.
    """
    if callable(rule):
        return rule
    if not isinstance(rule, str):
        raise ValueError(f"a constraint is a string such as '> 0' or '[0, 1)', or a callable; got {rule!r}")
    text = rule.strip()
    if kind is str:
        match = _SET.match(text)
        options = [part.strip() for part in match.group(1).split(",") if part.strip()] if match else []
        if not options:
            raise ValueError(f"a string hyper-parameter's rule is a choice such as '{{sum, mean}}'; got {rule!r}")
        shown = ", ".join(options)
        return lambda v: None if v in options else f"must be one of {shown}{closest(str(v)[:100], options)}"
    if match := _COMPARISON.match(text):
        op, bound = match.group(1), _number(match.group(2))
        test = _COMPARISONS[op]
        return lambda v: None if test(float(v), bound) else f"must be {op} {_show(bound)}"
    if match := _INTERVAL.match(text):
        left, low, high, right = match.group(1), _number(match.group(2)), _number(match.group(3)), match.group(4)
        if low > high:
            raise ValueError(f"interval {text!r} is empty (lower bound above upper)")

        def in_interval(v: float) -> str | None:
            above = v >= low if left == "[" else v > low
            below = v <= high if right == "]" else v < high
            return None if above and below else f"must lie in {text}"

        return in_interval
    if match := _SET.match(text):
        options = [_number(part) for part in match.group(1).split(",") if part.strip()]
        if not options:
            raise ValueError(f"set {text!r} lists no values")
        shown = ", ".join(_show(o) for o in options)
        return lambda v: None if float(v) in options else f"must be one of {shown}"
    raise ValueError(f"cannot read constraint {rule!r}; write '> 0', '>= 0', '< 1', '<= 1', "
                     f"'[0, 0.5)' (brackets include, parentheses exclude) or '{{0, 1}}', or pass a callable")


@dataclass(frozen=True)
class LossDefinition:
    """A registered loss.

    ``compute(logps, **hparams)`` returns a ``LossOutput``. ``defaults`` names every
    hyper-parameter the loss accepts with its default, whose type (bool, int, float or str) is the
    parameter's type; a spec may override any of them and nothing else. ``constraints`` declares,
    per hyper-parameter, which values make sense (``{"beta": "> 0", "label_smoothing": "[0, 0.5]",
    "reduce": "{sum, mean}"}``, see ``parse_constraint``), so a spec is checked before training
    (``check_params``) rather than failing at the first step.
    ``needs_rejected``/``needs_reference`` tell the engine what to compute;
    ``rejected_source`` is ``"data"`` or ``"generated"`` (SPIN: the engine samples y- from the
    opponent model).
    ``origin`` is filled in by the registry ("plugin 'hello', ldreg-hello 0.1.0") so that a
    failing call names who wrote the loss.

    ``accepts_unpaired``: the loss also trains on unpaired data (``SequenceLogps.desirable``);
    any other loss is refused on such data before training. ``needs_mismatched`` (a bool, or a
    callable of the stage's full hyper-parameters) asks the engine for TRL's mismatched pairs.
    ``check`` (optional) sees the full hyper-parameters and returns "name: problem" strings for
    what no single parameter's constraint can judge (e.g. two lists of unequal length).
    ``new_state`` (optional) makes a loss stateful: a factory of an object with
    ``state_dict() -> dict`` and ``load_state_dict(dict)``; the engine makes one per stage,
    passes it to ``compute`` as ``state=``, saves it in checkpoints and restores it on resume, so
    a resumed run equals an uninterrupted one. Calls outside training (the residual and
    influence tools) get a fresh state, so nothing they compute changes the training's.
    """

    name: str
    compute: LossFunction
    description: str
    defaults: Mapping[str, HyperValue] = field(default_factory=dict)
    needs_rejected: bool = False
    needs_reference: bool = False
    rejected_source: str = "data"
    constraints: Mapping[str, ConstraintRule] = field(default_factory=dict)
    accepts_unpaired: bool = False
    needs_mismatched: Union[bool, Callable[[Mapping[str, HyperValue]], bool]] = False
    check: Optional[Callable[[Mapping[str, HyperValue]], list[str]]] = None
    new_state: Optional[Callable[[], Any]] = None
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.rejected_source not in ("data", "generated"):
            raise ValueError(f"rejected_source must be 'data' or 'generated', not {self.rejected_source!r}")

    def __call__(self, logps: SequenceLogps, **hparams: HyperValue) -> LossOutput:
        """The guarded call (see ``checked_call``) without a stage or step to report."""
        return checked_call(self, logps, hparams)

    def full_params(self, params: Mapping[str, object]) -> dict[str, object]:
        """The defaults overridden by ``params`` (coerced): what ``compute`` is called with."""
        return {**self.defaults, **self.coerce(params)}

    def wants_mismatched(self, params: Mapping[str, object]) -> bool:
        """Whether the engine must compute TRL's mismatched pairs for a stage with ``params``."""
        need = self.needs_mismatched
        return bool(need(self.full_params(params)) if callable(need) else need)

    @property
    def label(self) -> str:
        """How messages name this loss: "loss 'dpo' (plugin 'ldreg.losses', ldreg 0.1.0)"."""
        return f"loss {self.name!r}" + (f" ({self.origin})" if self.origin else "")

    def check_params(self, params: Mapping[str, object]) -> list[str]:
        """What is wrong with ``params`` (a spec's overrides), one "name: problem (got value)" each.

        Every value must have its default's type (a float parameter takes any finite number; a
        bool one takes true/false, or 1/0 as specs written before types did) and then satisfy its
        declared constraint. An empty list means the parameters are fine.
        """
        problems = []
        for key, value in params.items():
            if key not in self.defaults:
                problems.append(f"{key}: not a hyper-parameter of loss {self.name!r}; "
                                f"it accepts: {', '.join(sorted(self.defaults)) or 'none'}")
            elif problem := self._value_problem(key, value):
                problems.append(f"{key}: {problem} (got {_preview(value)})")
        if not problems and self.check is not None:
            problems.extend(self.check(self.full_params(params)))
        return problems

    def coerce(self, params: Mapping[str, object]) -> dict[str, object]:
        """``params`` with each value in its parameter's type where that loses nothing: an integer
        or a numeric string (YAML reads 1e-5 as one) for a float, 1/0 for a bool. Anything else is
        left for ``check_params`` to name."""
        out = dict(params)
        for key, value in params.items():
            if key not in self.defaults or isinstance(value, bool):
                continue
            kind = param_type(self.defaults[key])
            if kind is float and isinstance(value, int):
                out[key] = float(value)
            elif kind is float and isinstance(value, str) and len(value) < 100:
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
            elif kind is bool and isinstance(value, (int, float)) and value in (0, 1):
                out[key] = bool(value)
        return out

    def _value_problem(self, key: str, value: object) -> str | None:
        kind = param_type(self.defaults[key])
        if kind is bool:
            if not (isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1))):
                return "must be true or false"
        elif kind is str:
            if not isinstance(value, str):
                return "must be a string"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be an integer" if kind is int else "must be a number"
        elif kind is int and not isinstance(value, int):
            return "must be an integer"
        elif not math.isfinite(value):
            return "must be a finite number"
        rule = self.constraints.get(key)
        if rule is None:
            return None
        try:
            return parse_constraint(rule, kind)(value if kind in (str, int) else float(value))
        except Exception as exc:  # a plugin's own check failing is named, not traced back
            return f"the constraint of {self.label} failed on it ({type(exc).__name__}: {_clip(str(exc), 80)})"

    def declaration_problems(self) -> list[str]:
        """What is wrong with this declaration itself: checked when a plugin registers it.

        ``defaults`` must match ``compute``'s signature (every key a keyword it accepts, every
        parameter it requires named in ``defaults``), constraints must be readable and name known
        hyper-parameters, and the defaults must satisfy them.
        """
        problems = _signature_problems(self)
        for key, default in self.defaults.items():
            if not isinstance(default, (bool, int, float, str)):
                problems.append(f"defaults[{key!r}] is {_preview(default)}; a hyper-parameter's default "
                                f"is a bool, int, float or str (its type is the parameter's type)")
        if problems:
            return problems
        for key, rule in self.constraints.items():
            if key not in self.defaults:
                problems.append(f"constraints name {key!r}, which is not in defaults "
                                f"({', '.join(sorted(self.defaults)) or 'none'})")
                continue
            try:
                parse_constraint(rule, param_type(self.defaults[key]))
            except ValueError as exc:
                problems.append(f"constraints[{key!r}]: {exc}")
                continue
            if problem := self._value_problem(key, self.defaults[key]):
                problems.append(f"its default {key}={_preview(self.defaults[key])} breaks its own constraint: {problem}")
        return problems


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _signature_problems(definition: LossDefinition) -> list[str]:
    try:
        sig = inspect.signature(definition.compute)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return []
    params = list(sig.parameters.values())
    shown = f"compute{sig}"
    if any(p.kind is p.VAR_KEYWORD for p in params):
        named = None  # **kwargs: every key is accepted
    else:
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.kind is p.VAR_POSITIONAL]
    problems = []
    if not positional:
        return [f"{shown} takes no positional argument for the SequenceLogps; define compute(logps, ...)"]
    first = positional[0].name if positional[0].kind is not positional[0].VAR_POSITIONAL else None
    if named is not None:
        unknown = sorted(k for k in definition.defaults if k not in named or k == first)
        if unknown:
            problems.append(f"defaults name {', '.join(map(repr, unknown))}, which {shown} does not accept; "
                            f"add {'them' if len(unknown) > 1 else 'it'} to compute's parameters or drop "
                            f"{'them' if len(unknown) > 1 else 'it'} from defaults")
    if definition.new_state is not None and named is not None and "state" not in named:
        problems.append(f"{shown} does not accept 'state', which a loss with new_state receives; "
                        f"add a state parameter")
    required = [p.name for p in params[1:] if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in definition.defaults
                and not (p.name == "state" and definition.new_state is not None)]
    if required:
        problems.append(f"{shown} requires {', '.join(map(repr, required))}, which defaults does not name; "
                        f"give {'them' if len(required) > 1 else 'it'} a default in defaults")
    return problems


class LossCallError(PluginError):
    """A loss plugin returned something the engine cannot train on, or raised."""


class NonFiniteLoss(LdregError):
    """A loss became NaN or infinite: stop, naming the stage and step, rather than train on garbage."""


def _inputs(logps: SequenceLogps) -> dict[str, Tensor]:
    return {name: value for name, value in vars(logps).items() if isinstance(value, Tensor)}


def checked_call(definition: LossDefinition, logps: SequenceLogps, hparams: Mapping[str, HyperValue],
                 where: str = "", diverged: str = "lower the learning rate or check the data",
                 state: Any = None) -> LossOutput:
    """Call a loss plugin and check what it returned, so a broken plugin is named, not traced back.

    The result must be a ``LossOutput`` whose loss is a 0-dim tensor, finite, and (when the
    log-probs carry gradients) attached to them. ``where`` ("stage '1-dpo', step 3") and
    ``diverged`` (what to do when the model's own log-probs were already non-finite) come from
    the trainer. A NaN or inf loss is blamed on the plugin only if every input was finite.
    ``state`` is the training's loss state (``LossDefinition.new_state``); None gives a stateful
    loss a fresh one, so a call outside training changes no state that persists.
    """
    unknown = sorted(set(hparams) - set(definition.defaults))
    if unknown:
        raise TypeError(
            f"loss {definition.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(definition.defaults)) or 'none'}"
        )
    at = f" at {where}" if where else ""

    def fail(problem: str, fix: str) -> LossCallError:
        return LossCallError(f"{definition.label} {problem}{at}: {fix}")

    try:
        extra = {} if definition.new_state is None else {"state": definition.new_state() if state is None else state}
        out = definition.compute(logps, **{**definition.defaults, **definition.coerce(hparams)}, **extra)
    except (LdregError, MemoryError, KeyboardInterrupt):
        raise  # already says what is wrong (e.g. a missing reference), or not the plugin's doing
    except Exception as exc:
        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            raise
        raise fail(f"raised {type(exc).__name__}: {_clip(str(exc))}",
                   "this is a bug in the loss plugin; run with LDREG_DEBUG=1 for its traceback") from exc
    if not isinstance(out, LossOutput):
        kind = "a tensor" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise fail(f"returned {kind}, not a LossOutput",
                   "return LossOutput(loss, metrics) from ldreg.losses, with loss a 0-dim tensor")
    loss = out.loss
    if not isinstance(loss, Tensor):
        raise fail(f"returned LossOutput.loss as a {type(loss).__name__}, not a torch tensor",
                   "compute the loss with torch operations on the log-probs, without .item() or float()")
    if loss.dim() != 0:
        raise fail(f"returned a tensor of shape {list(loss.shape)}",
                   "a loss must return a 0-dim tensor; wrap it in LossOutput(loss.mean(), ...)")
    if not torch.isfinite(loss.detach()):
        value = float(loss.detach())
        bad = {name: int((~torch.isfinite(t.detach().float())).sum()) for name, t in _inputs(logps).items()
               if t.is_floating_point()}
        bad = {name: n for name, n in bad.items() if n}
        prefix = f"{where}: " if where else ""
        if bad:
            which = ", ".join(f"{name}: {n} of {_inputs(logps)[name].numel()}" for name, n in bad.items())
            raise NonFiniteLoss(f"{prefix}loss is {value}; the model's log-probs were already non-finite "
                                f"({which}), so the model diverged, not {definition.label}: {diverged}")
        used = ", ".join(f"{k}={v}" for k, v in {**definition.defaults, **hparams}.items())
        raise NonFiniteLoss(f"{prefix}loss is {value} from {definition.label} although every input log-prob "
                            f"was finite, so the loss plugin produced it (log of 0, 0/0 or an overflow in its "
                            f"formula{', with ' + used if used else ''}): fix its compute")
    needs_grad = any(t.requires_grad for t in _inputs(logps).values())
    if needs_grad and not loss.requires_grad:
        raise fail("returned a loss that does not require grad (detached, or not computed from the log-probs)",
                   "compute it from logps with torch operations, without .detach(), .item(), torch.tensor(...) "
                   "or torch.no_grad()")
    return out


def detached_metrics(**values: Tensor) -> dict[str, float]:
    """Turn batch tensors into the plain floats a logger stores (means over the batch).

    The mean is taken in float64, so a logged reward equals the loss's own float64 value to the
    last digit (a float32 cast would differ by up to ~5e-8 relative from what the loss saw).
    """
    return {name: float(torch.as_tensor(v).detach().to("cpu", torch.float64).mean())  # MPS has no float64
            for name, v in values.items()}
