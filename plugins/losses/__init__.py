"""Built-in finetuning losses. Each module defines one ``LossDefinition``; this hook adds them all."""

from ldreg.hookspecs import hookimpl

from .sft import EXTEND, SFT

BUILTIN_LOSSES = (SFT, EXTEND)


@hookimpl
def ldreg_register_losses(registry):
    for loss in BUILTIN_LOSSES:
        registry.add(loss)
