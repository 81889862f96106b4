"""Built-in finetuning losses. Each module defines its ``LossDefinition``s; this hook adds them all."""

from ldreg.hookspecs import hookimpl

from .bco import BCO
from .cpo import CPO, SIMPO
from .dpo import DPO
from .dpop import DPOP
from .ipo import IPO
from .kto import KTO
from .orpo import ORPO
from .sft import EXTEND, SFT
from .slic import SLIC
from .spin import SPIN
from .sppo import SPPO
from .trl_dpo import SINGLE as TRL_SINGLE, TRL_DPO

BUILTIN_LOSSES = (SFT, EXTEND, DPO, IPO, SLIC, SPPO, SPIN, DPOP, SIMPO, CPO, ORPO, KTO, BCO, TRL_DPO, *TRL_SINGLE)


@hookimpl
def ldreg_register_losses(registry):
    for loss in BUILTIN_LOSSES:
        registry.add(loss)
