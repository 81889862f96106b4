"""A local causal LM as a pairwise judge: the next-token log-probabilities of "A" and "B".

A small LM prefers a letter whatever the responses say (SmolLM2-135M names "A" nearly always), so
by default the score is contextually calibrated (Zhao et al. 2021, "Calibrate Before Use"): the
same prompt with both responses replaced by a content-free "N/A" gives the judge's prior for A
over B on that prompt, and the verdict is the sign of the score minus that prior.

No sampling and no hub: the model is a local directory or one of ldreg's named models (prepared
offline from a wheel, ``ldreg.zoo``), so the same model and query always give the same verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ldreg.judging.judge import Judge, JudgeError, JudgeQuery, pairwise_prompt


def resolve_model(model: str) -> Path:
    """A named model (prepared on first use) or an existing local directory; never a hub id."""
    from ldreg import zoo

    if zoo.is_named(model):
        return zoo.prepare(model)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise JudgeError(f"judge 'hf': option model={model!r} is neither a named model ({', '.join(zoo.NAMED)}) "
                         f"nor a local model directory with a config.json; this judge never downloads: "
                         f"give a local path or prepare a named model (`ldreg models prepare smollm2-135m`)")
    return path.resolve()


def letter_ids(tokenizer, letter: str) -> list[int]:
    """Every first token that starts the answer ``letter`` ("A" or " A"), without duplicates."""
    ids = []
    for text in (letter, " " + letter):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokens and tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


class HFJudge(Judge):
    name = "hf"
    description = "a local causal LM (a directory or a named model) compares A and B by next-token log-probs"
    options = {
        "model": ("smollm2-135m", "a named model (ldreg models) or a local HF model directory"),
        "max_chars": (1500, "characters kept of the message and of each response"),
        "max_tokens": (1024, "tokens of the judging prompt kept (its end)"),
        "calibrate": ("content_free", "content_free: subtract the score of the prompt with both responses 'N/A' "
                                      "(Zhao et al. 2021); none: the raw score"),
    }

    def __init__(self) -> None:
        self._loaded: tuple[str, Any, Any] | None = None
        self._priors: dict[tuple, dict[str, float]] = {}  # (model, max_chars, max_tokens) -> prompt -> prior

    def identity(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        from ldreg import zoo

        path = resolve_model(str(settings["model"]))
        record = zoo.manifest(zoo.get(str(settings["model"]))) if zoo.is_named(str(settings["model"])) else None
        source = record["checksum"] if record else _directory_stamp(path)
        return {"model": str(settings["model"]), "weights": source, "max_chars": int(settings["max_chars"]),
                "max_tokens": int(settings["max_tokens"]), "calibrate": _calibration(settings)}

    def _model(self, settings: Mapping[str, Any]):
        path = str(resolve_model(str(settings["model"])))
        if self._loaded is None or self._loaded[0] != path:
            import transformers

            from ldreg.models import load_model, load_tokenizer

            transformers.utils.logging.disable_progress_bar()  # one judge, not a progress bar per weight file

            model = load_model(path, "cpu")
            model.eval()
            self._loaded = (path, model, load_tokenizer(path))
        return self._loaded[1], self._loaded[2]

    def text(self, tokenizer, query: JudgeQuery, max_chars: int) -> str:
        """The judging prompt, in the tokenizer's chat template when it has one."""
        body = pairwise_prompt(query, max_chars)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                 add_generation_prompt=True)
        return body + "\nAnswer:"

    def scores(self, queries: Sequence[JudgeQuery], settings: Mapping[str, Any]) -> list[float]:
        """log p(A) - log p(B) of the next token, one per query, less the prompt's content-free
        prior when calibrating (the prior is computed once per distinct prompt)."""
        raw = self.raw_scores(queries, settings)
        if _calibration(settings) == "none":
            return raw
        key = (str(settings["model"]), int(settings["max_chars"]), int(settings["max_tokens"]))
        known = self._priors.setdefault(key, {})  # a prompt's prior is the same in every call (win rate, check)
        missing = sorted({q.prompt for q in queries} - set(known))
        known.update(zip(missing, self.raw_scores([JudgeQuery(p, "N/A", "N/A") for p in missing], settings)))
        return [s - known[q.prompt] for s, q in zip(raw, queries)]

    def raw_scores(self, queries: Sequence[JudgeQuery], settings: Mapping[str, Any]) -> list[float]:
        """log p(A) - log p(B) of the next token, one per query (each letter's first tokens pooled)."""
        import torch

        model, tokenizer = self._model(settings)
        a_ids, b_ids = letter_ids(tokenizer, "A"), letter_ids(tokenizer, "B")
        out = []
        for query in queries:
            ids = tokenizer(self.text(tokenizer, query, int(settings["max_chars"])),
                            add_special_tokens=False)["input_ids"][-int(settings["max_tokens"]):]
            with torch.no_grad():  # only the last position's logits: the LM head is a large share of the cost
                logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            out.append(float(torch.logsumexp(logp[a_ids], 0) - torch.logsumexp(logp[b_ids], 0)))
        return out

    def verdicts(self, queries: Sequence[JudgeQuery], settings: Mapping[str, Any]) -> list[str]:
        return ["A" if s > 0 else "B" if s < 0 else "tie" for s in self.scores(queries, settings)]


def _calibration(settings: Mapping[str, Any]) -> str:
    value = str(settings.get("calibrate", "content_free"))
    if value not in ("content_free", "none"):
        raise JudgeError(f"judge 'hf': option calibrate={value!r} is not one of content_free, none")
    return value


def _directory_stamp(path: Path) -> str:
    """The weight files' names, sizes and modification times: cheap, and changes when they do."""
    parts = sorted(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in path.iterdir() if p.is_file())
    return "|".join(parts)
