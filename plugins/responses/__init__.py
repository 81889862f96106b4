"""Built-in response-type generators (the paper's Appendix D.1)."""

from ldreg.hookspecs import hookimpl

from .basic import Chosen, ChosenPermuted, Rejected
from .model import ChosenSelfRephrase, Initial, ModelRephrase, RejectedSelfRephrase
from .pools import IrrelevantTest, IrrelevantTrain
from .random_text import RandomPermuted, RandomSentence
from .rephrase import REPHRASES

BUILTIN_GENERATORS = (
    Chosen(), Rejected(), Initial(),
    *REPHRASES,
    ChosenSelfRephrase(), RejectedSelfRephrase(), ModelRephrase(),
    IrrelevantTrain(), IrrelevantTest(), RandomSentence(),
    ChosenPermuted(), RandomPermuted(),
)


@hookimpl
def ldreg_register_responses(registry):
    for generator in BUILTIN_GENERATORS:
        registry.add(generator)
