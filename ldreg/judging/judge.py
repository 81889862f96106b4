"""The judge contract: a plugin that says which of two responses to a prompt is better.

A judge sees each comparison in one fixed order (response "A" shown first); ldreg swaps the order
itself (``ldreg.judging.winrate``), so a judge never needs to debias anything. Nothing here imports
torch: the HTTP judge and the CLI's option checks stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ldreg.errors import LdregError

VERDICTS = ("A", "B", "tie")  # "tie": the judge named neither (e.g. an unreadable answer)


class JudgeError(LdregError):
    """A judge cannot give verdicts (a bad option, an unreachable endpoint, a missing model)."""


@dataclass(frozen=True)
class JudgeQuery:
    """One comparison as the judge sees it: ``first`` is shown as response A, ``second`` as B."""

    prompt: str
    first: str
    second: str


PAIRWISE_INSTRUCTIONS = (
    "You are judging two responses to the same user message. Pick the response that is more helpful, "
    "relevant and well written. Answer with a single letter: A or B."
)


def pairwise_prompt(query: JudgeQuery, max_chars: int = 1500) -> str:
    """The text both built-in judges show: the instructions, the message, A, then B.

    Each part keeps its first ``max_chars`` characters (the message its last), so one long
    response cannot push the other out of a small judge's context.
    """
    def cut(text: str, keep_end: bool = False) -> str:
        text = text.strip()
        if len(text) <= max_chars:
            return text
        return "..." + text[-max_chars:] if keep_end else text[:max_chars] + "..."

    return (f"{PAIRWISE_INSTRUCTIONS}\n\n[User message]\n{cut(query.prompt, keep_end=True)}\n\n"
            f"[Response A]\n{cut(query.first)}\n\n[Response B]\n{cut(query.second)}\n\n"
            "Which response is better, A or B?")


class Judge:
    """Says, for each query, whether response A or B is better. Subclasses set ``name``,
    ``description`` and ``options`` (each option's default and one line of help) and implement
    ``verdicts``; ``identity`` says what made the verdicts (stored verdicts are reused only
    under the same identity)."""

    name: str = ""
    description: str = ""
    # option name -> (default, help); a default of None means the option is required
    options: dict[str, tuple[Any, str]] = {}

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults overridden by ``given``; an unknown or missing option is one message."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            accepted = ", ".join(f"{k} ({h})" for k, (_, h) in self.options.items()) or "none"
            raise JudgeError(f"judge {self.name!r}: unknown option {unknown[0]!r}; it accepts: {accepted}")
        out = {k: given.get(k, default) for k, (default, _) in self.options.items()}
        missing = [k for k, v in out.items() if v is None]
        if missing:
            raise JudgeError(f"judge {self.name!r}: option {missing[0]!r} is required "
                             f"({self.options[missing[0]][1]}); give it as --option {missing[0]}=VALUE")
        return out

    def identity(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """JSON-safe: what decides the verdicts (by default the settings themselves)."""
        return dict(settings)

    def verdicts(self, queries: Sequence[JudgeQuery], settings: Mapping[str, Any]) -> list[str]:
        """One of "A", "B" or "tie" per query, deterministically, in order."""
        raise NotImplementedError


def checked_verdicts(judge: Judge, queries: Sequence[JudgeQuery], settings: Mapping[str, Any],
                     origin: str = "") -> list[str]:
    """``judge.verdicts``, refusing a wrong answer with one message naming the judge and its plugin."""
    who = f"judge {judge.name!r}" + (f" ({origin})" if origin else "")
    if not queries:
        return []
    try:
        out = judge.verdicts(list(queries), settings)
    except LdregError:
        raise
    except Exception as exc:
        raise JudgeError(f"{who} failed: {type(exc).__name__}: {exc}") from exc
    out = list(out) if out is not None else []
    if len(out) != len(queries):
        raise JudgeError(f"{who} returned {len(out)} verdicts for {len(queries)} comparisons")
    bad = [v for v in out if v not in VERDICTS]
    if bad:
        raise JudgeError(f"{who} returned the verdict {bad[0]!r}; a verdict is one of {', '.join(VERDICTS)}")
    return out
