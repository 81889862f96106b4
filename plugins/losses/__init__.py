"""Built-in finetuning losses. Each module defines one ``LossDefinition``; this hook adds them all."""

from ldreg.hookspecs import hookimpl

from .dpo import DPO
from .ipo import IPO
from .sft import EXTEND, SFT
from .slic import SLIC
from .spin import SPIN
from .sppo import SPPO

BUILTIN_LOSSES = (SFT, EXTEND, DPO, IPO, SLIC, SPPO, SPIN)


@hookimpl
def ldreg_register_losses(registry):
    for loss in BUILTIN_LOSSES:
        registry.add(loss)
