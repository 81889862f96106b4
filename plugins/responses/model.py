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

Options: ``initial_sampling`` ("sample", default, or "greedy"), ``temperature`` (1.0), ``top_p``
(1.0), ``max_prompt_length`` (256), ``max_new_tokens`` (a cap on generated tokens), ``rephrase_template``, ``rephrase_model``,
``rephrase_sampling`` ("greedy", default for model_rephrase).
"""

from __future__ import annotations

from functools import lru_cache

from ldreg.data.errors import DataError
from ldreg.data.generation import GREEDY, Sampling, count_tokens, generate_continuation
from ldreg.responses import GenerationContext, PreferenceExample, ResponseGenerator

SELF_REPHRASE_TEMPLATE = "Please rephrase the following sentence: \n@@@ Original Sentence:{response}\n@@@ Rephrase:"
STOP_MARKERS = ("@@@", "\n\n")


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

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        _require_model(ctx, self.name)
        sampling = sampling_from(ctx.options, "initial_sampling", "sample")
        budget = _budget(ctx, count_tokens(ctx.tokenizer, example.chosen))
        return generate_continuation(ctx.model, ctx.tokenizer, example.prompt, budget, _seed(ctx, example, self.name),
                                     sampling, int(ctx.options.get("max_prompt_length", 256)))


class _SelfRephrase(ResponseGenerator):
    needs_model = True
    source = "chosen"

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

    def generate(self, example: PreferenceExample, ctx: GenerationContext) -> str:
        path = ctx.options.get("rephrase_model")
        if not path:
            raise DataError("response type 'model_rephrase' needs options.rephrase_model: the path (or hub id) "
                            "of a causal LM to rephrase with")
        source = ctx.options.get("rephrase_source", "chosen")
        if source not in ("chosen", "rejected"):
            raise DataError(f"options.rephrase_source={source!r}: choose 'chosen' or 'rejected'")
        try:
            model, tokenizer = _load_rephraser(str(path))
        except OSError as exc:
            raise DataError(f"options.rephrase_model={path!r} cannot be loaded: {exc}") from exc
        sampling = sampling_from(ctx.options, "rephrase_sampling", "greedy")
        return rephrase_with(model, tokenizer, getattr(example, source), ctx, example, self.name, sampling)

    def provenance(self, ctx: GenerationContext) -> dict:
        return {"model": str(ctx.options.get("rephrase_model")),
                "template": ctx.options.get("rephrase_template", SELF_REPHRASE_TEMPLATE)}
