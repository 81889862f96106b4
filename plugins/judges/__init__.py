"""Built-in pairwise judges: a local Hugging Face causal LM, and an OpenAI-compatible HTTP endpoint."""

from ldreg.hookspecs import hookimpl

from .hf import HFJudge
from .http import HTTPJudge


@hookimpl
def ldreg_register_judges(registry):
    for judge in (HFJudge(), HTTPJudge()):
        registry.add(judge)
