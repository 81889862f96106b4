"""Built-in response-type generators (the paper's Appendix D.1)."""

from ldreg.hookspecs import hookimpl

from .basic import Chosen, ChosenPermuted

BUILTIN_GENERATORS = (Chosen(), ChosenPermuted())


@hookimpl
def ldreg_register_responses(registry):
    for generator in BUILTIN_GENERATORS:
        registry.add(generator)
