"""Responses a language model writes: y0 (the base model's own answer) and self-rephrases.

``initial`` and ``chosen_selfr``/``rejected_selfr`` use the context's model (the one being
finetuned, before finetuning); ``model_rephrase`` loads any local HF causal LM named by path in
``ctx.options["rephrase_model"]``, for users with a real rephrasing model.

The self-rephrase prompt is the authors'. Their figure 11 (an image, lost in the text) cites the
template of Yang et al. 2024 (Self-Distillation Fine-Tuning); the authors' released ``chosen_selfr``
field shows what they actually fed Pythia: records begin with "Please rephrase the following
sentence: \\n@@@ Original Sentence: <y+>\\n@@@ Rephrase:" followed by the raw generation (often
running on into further "@@@" lines). We use that template, and keep the generation up to the next
"@@@" marker or blank line (``ctx.options["selfr_raw"] = True`` keeps all of it, as their field did).

Options come from the spec's ``probing.options``; each class declares the keys it reads in
``options`` (shown with their defaults there) and checks their values in ``check_options``, so a
misspelt key or a bad value is refused when the spec is validated, before any model is loaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ldreg.data.errors import DataError
from ldreg.sampling import GREEDY, Sampling, count_tokens, generate_continuation
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator

SELF_REPHRASE_TEMPLATE = "Please rephrase the following sentence: \n@@@ Original Sentence:{response}\n@@@ Rephrase:"
STOP_MARKERS = ("@@@", "\n\n")


SAMPLING_OPTIONS = {
    "temperature": "sampling temperature, > 0 (default 1.0)",
    "top_p": "nucleus sampling mass, in (0, 1] (default 1.0)",
    "max_new_tokens": "a cap on the tokens generated per response (default: none)",
}
REPHRASE_OPTIONS = {
    **SAMPLING_OPTIONS,
    "rephrase_template": "the rephrase prompt, with {response} where the text goes (default: the authors')",
    "max_rephrase_prompt_length": "tokens of the rephrase prompt kept (default 512)",
    "selfr_raw": "true: keep the whole generation, as the authors' field did (default false)",
}
CHOICES = {"initial_sampling": ("greedy", "sample"), "selfr_sampling": ("greedy", "sample"),
           "rephrase_sampling": ("greedy", "sample"), "rephrase_source": ("chosen", "rejected"),
           "selfr_raw": (True, False)}


def option_problems(options: dict, declared: dict) -> list[str]:
    """What is wrong with the values of the ``declared`` keys in ``options`` ("key: message")."""
    problems = []
    for key, value in options.items():
        if key not in declared:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in CHOICES and value not in CHOICES[key]:
            problems.append(f"{key}: must be one of {', '.join(map(repr, CHOICES[key]))}, got {value!r}")
        elif key == "temperature" and not (number and value > 0):
            problems.append(f"temperature: must be a number > 0, got {value!r}")
        elif key == "top_p" and not (number and 0 < value <= 1):
            problems.append(f"top_p: must be a number in (0, 1], got {value!r}")
        elif key.startswith("max_") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            problems.append(f"{key}: must be an integer > 0, got {value!r}")
        elif key == "rephrase_template" and "{response}" not in str(value):
            problems.append(f"rephrase_template: must contain {{response}} where the text goes, got {value!r}")
        elif key == "rephrase_model" and not (isinstance(value, str) and value):
            problems.append(f"rephrase_model: must be the path of a causal LM, got {value!r}")
    return problems


def sampling_from(options: dict, key: str, default: str) -> Sampling:
    mode = options.get(key, default)
    if mode == "greedy":
        return GREEDY
    if mode == "sample":
        return Sampling(True, float(options.get("temperature", 1.0)), float(options.get("top_p", 1.0)))
    raise DataError(f"option {key}={mode!r}: choose 'greedy' or 'sample'")


def cut_rephrase(generated: str, original: str) -> str:
    """The rephrase proper: up to the first stop marker, stripped, with y's leading space."""
    end = min((i for i in (generated.find(m) for m in STOP_MARKERS) if i >= 0), default=len(generated))
    text = generated[:end].strip()
    return (" " + text) if text and original[:1].isspace() else text


def _require_model(ctx: GenerationContext, name: str) -> None:
    if ctx.model is None or ctx.tokenizer is None:
        raise DataError(f"response type {name!r} needs a model: set GenerationContext.model and .tokenizer "
                        f"(the base model before finetuning), or leave {name!r} out of the probe types")


def _budget(ctx: GenerationContext, tokens: int) -> int:
    """New tokens to generate: ``tokens``, capped by options.max_new_tokens when set."""
    cap = ctx.options.get("max_new_tokens")
    return min(tokens, int(cap)) if cap else tokens


def _seed(ctx: GenerationContext, example: PreferenceExample, name: str) -> int:
    return ctx.rng(example, name).getrandbits(63)


def rephrase_with(model, tokenizer, text: str, ctx: GenerationContext, example: PreferenceExample,
                  name: str, sampling: Sampling) -> str:
    template = ctx.options.get("rephrase_template", SELF_REPHRASE_TEMPLATE)
    prompt = template.format(response=text)
    budget = _budget(ctx, count_tokens(tokenizer, text) + 16)
    generated = generate_continuation(model, tokenizer, prompt, budget, _seed(ctx, example, name), sampling,
                                      max_prompt_tokens=int(ctx.options.get("max_rephrase_prompt_length", 512)))
    return generated if ctx.options.get("selfr_raw") else cut_rephrase(generated, text)


class Initial(ResponseGenerator):
    name = "initial"
    label = "y0 (base model's answer)"
    description = "y0: the base model's own answer to x, as long as y+ in tokens (seeded)."
    needs_model = True
    options = {"initial_sampling": "'sample' (default) or 'greedy'",
               "max_prompt_length": "tokens of x kept (default 256)", **SAMPLING_OPTIONS}

    def check_options(self, options: dict) -> list[str]:
        return option_problems(options, self.options)

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        _require_model(ctx, self.name)
        sampling = sampling_from(ctx.options, "initial_sampling", "sample")
        budget = _budget(ctx, count_tokens(ctx.tokenizer, example.chosen))
        return generate_continuation(ctx.model, ctx.tokenizer, example.prompt, budget, _seed(ctx, example, self.name),
                                     sampling, int(ctx.options.get("max_prompt_length", 256)))


class _SelfRephrase(ResponseGenerator):
    needs_model = True
    source = "chosen"
    options = {"selfr_sampling": "'sample' (default) or 'greedy'", **REPHRASE_OPTIONS}

    def check_options(self, options: dict) -> list[str]:
        return option_problems(options, self.options)

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        _require_model(ctx, self.name)
        sampling = sampling_from(ctx.options, "selfr_sampling", "sample")
        return rephrase_with(ctx.model, ctx.tokenizer, getattr(example, self.source), ctx, example, self.name, sampling)

    def provenance(self, ctx: GenerationContext) -> dict:
        return {"template": ctx.options.get("rephrase_template", SELF_REPHRASE_TEMPLATE)}


class ChosenSelfRephrase(_SelfRephrase):
    name = "chosen_selfr"
    label = "y+ self-rephrase"
    description = "y+ rephrased by the base model itself with the authors' rephrase prompt."
    source = "chosen"


class RejectedSelfRephrase(_SelfRephrase):
    name = "rejected_selfr"
    label = "y- self-rephrase"
    description = "y- rephrased by the base model itself with the authors' rephrase prompt."
    source = "rejected"


@lru_cache(maxsize=2)
def _load_rephraser(path: str):
    from ldreg.models import load_model, load_tokenizer

    return load_model(path), load_tokenizer(path)


class ModelRephrase(ResponseGenerator):
    name = "model_rephrase"
    label = "model rephrase"
    description = "y+ (or y-, option rephrase_source) rephrased by any local HF causal LM (option rephrase_model)."
    options = {"rephrase_model": "the path of a local HF causal LM to rephrase with (required)",
               "rephrase_source": "'chosen' (default) or 'rejected': which response to rephrase",
               "rephrase_sampling": "'greedy' (default) or 'sample'", **REPHRASE_OPTIONS}

    def check_options(self, options: dict) -> list[str]:
        """The rephrasing model is required: without it there is nothing to rephrase with."""
        path = options.get("rephrase_model")
        if not path:
            return ["rephrase_model: required: the path of a local causal LM to rephrase with"]
        if isinstance(path, str) and (path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir()):
            return [f"rephrase_model: no such directory {path!r}; give a local HF model directory"]
        return option_problems(options, self.options)

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        path = ctx.options.get("rephrase_model")
        if not path:
            raise DataError("response type 'model_rephrase' needs probing.options.rephrase_model: the path of "
                            "a local causal LM to rephrase with")
        source = ctx.options.get("rephrase_source", "chosen")
        if source not in ("chosen", "rejected"):
            raise DataError(f"probing.options.rephrase_source={source!r}: choose 'chosen' or 'rejected'")
        try:
            model, tokenizer = _load_rephraser(str(path))
        except OSError as exc:
            raise DataError(f"probing.options.rephrase_model={path!r} cannot be loaded: {exc}") from exc
        sampling = sampling_from(ctx.options, "rephrase_sampling", "greedy")
        return rephrase_with(model, tokenizer, getattr(example, source), ctx, example, self.name, sampling)

    def provenance(self, ctx: GenerationContext) -> dict:
        return {"model": str(ctx.options.get("rephrase_model")),
                "template": ctx.options.get("rephrase_template", SELF_REPHRASE_TEMPLATE)}
