"""Tokenising (prompt, response) pairs with the authors' truncation rules, counted, never silent.

The rules are those of the DPO repository the authors forked (``tokenize_batch_element``):

1. prompt and response are tokenised SEPARATELY (no special tokens), and EOS is appended to the
   response, so the response's first token is the one the model predicts after the prompt
   (" Sure" after "Assistant:"), exactly as in training;
2. if prompt + response is longer than ``max_length``, the prompt is cut to ``max_prompt_length``
   tokens, keeping its END for HH (``keep_end``: the last turns matter) or its start otherwise;
3. if it is still too long, the response is cut to ``max_length - max_prompt_length`` tokens
   (its EOS may go with it, as in the authors' code).

For a preference pair the authors decide rule 2 on the LONGER of the two responses, so chosen and
rejected keep the same prompt tokens: ``encode_preference`` does that. A ``TruncationReport`` counts
every cut so a run can report how much text it never saw.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from ldreg.data.errors import DataError
from ldreg.dynamics.logprobs import EncodedPair

TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass(frozen=True)
class TokenLimits:
    """The authors' defaults: max length 512, max prompt 256, HH keeps the prompt's end."""

    max_length: int = 512
    max_prompt_length: int = 256
    truncation_mode: str = "keep_end"
    add_eos: bool = True

    def __post_init__(self) -> None:
        if self.truncation_mode not in TRUNCATION_MODES:
            raise DataError(f"truncation_mode {self.truncation_mode!r}: choose one of {', '.join(TRUNCATION_MODES)}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise DataError(
                f"need 0 < max_prompt_length ({self.max_prompt_length}) < max_length ({self.max_length}): "
                f"the response keeps max_length - max_prompt_length tokens"
            )


ROWS_NAMED = 10  # a warning names at most this many rows (the worst first)


@dataclass
class TruncationReport:
    """How many pairs were encoded and how many lost prompt or response tokens (and, for data
    rows, which rows lost how many), so a run can warn at its start and not only in its result."""

    pairs: int = 0
    truncated: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0
    rows: dict[int, int] = field(default_factory=dict)  # data row -> tokens it lost

    def record(self, prompt_dropped: int, response_dropped: int, row: int | None = None) -> None:
        self.pairs += 1
        self.truncated += bool(prompt_dropped or response_dropped)
        self.prompt_truncated += bool(prompt_dropped)
        self.response_truncated += bool(response_dropped)
        self.prompt_tokens_dropped += prompt_dropped
        self.response_tokens_dropped += response_dropped
        if row is not None and (prompt_dropped or response_dropped):
            self.rows[row] = self.rows.get(row, 0) + prompt_dropped + response_dropped

    def merge(self, other: "TruncationReport") -> "TruncationReport":
        for key, value in asdict(other).items():
            if key == "rows":
                for row, lost in value.items():
                    self.rows[row] = self.rows.get(row, 0) + lost
            else:
                setattr(self, key, getattr(self, key) + value)
        return self

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["rows"] = len(self.rows)  # how many data rows lost tokens (the count, not the list)
        return out

    def warning(self) -> str | None:
        """One line for the console when anything was cut, naming the worst data rows; else None."""
        if not self.truncated:
            return None
        worst = sorted(self.rows.items(), key=lambda kv: (-kv[1], kv[0]))[:ROWS_NAMED]
        named = ", ".join(f"row {row} ({lost:,} tokens)" for row, lost in worst)
        more = f" and {len(self.rows) - len(worst)} more" if len(self.rows) > len(worst) else ""
        where = f"; data rows: {named}{more}" if worst else ""
        return (f"warning: truncated {self.truncated} of {self.pairs} pairs, "
                f"{self.prompt_tokens_dropped + self.response_tokens_dropped:,} tokens never seen "
                f"({self.prompt_tokens_dropped:,} prompt, {self.response_tokens_dropped:,} response){where}; "
                f"raise data.max_length or shorten those rows")

    def warn(self, stream=None) -> None:
        """Print ``warning()`` to stderr (or ``stream``) when anything was cut."""
        text = self.warning()
        if text:
            print(text, file=stream or sys.stderr, flush=True)

    def summary(self) -> str:
        if not self.truncated:
            return f"{self.pairs} pairs encoded, none truncated"
        return (f"{self.truncated} of {self.pairs} pairs truncated ({self.prompt_truncated} prompts lost "
                f"{self.prompt_tokens_dropped} tokens, {self.response_truncated} responses lost "
                f"{self.response_tokens_dropped} tokens)")


def token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def response_token_ids(tokenizer, response: str, limits: TokenLimits) -> list[int]:
    ids = token_ids(tokenizer, response)
    if limits.add_eos:
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token; set add_eos=False or give it one")
        ids.append(tokenizer.eos_token_id)
    return ids


def truncate_ids(prompt: list[int], responses: list[list[int]], limits: TokenLimits
                 ) -> tuple[list[int], list[list[int]]]:
    """The authors' two rules on token ids; the decision uses the longest response."""
    longest = max((len(r) for r in responses), default=0)
    if len(prompt) + longest > limits.max_length:
        keep = limits.max_prompt_length
        prompt = prompt[-keep:] if limits.truncation_mode == "keep_end" else prompt[:keep]
    if len(prompt) + longest > limits.max_length:
        keep = limits.max_length - limits.max_prompt_length
        responses = [r[:keep] for r in responses]
    return prompt, responses


def encode_ids(prompt: list[int], responses: list[list[int]], limits: TokenLimits,
               report: TruncationReport | None = None, row: int | None = None) -> list[EncodedPair]:
    """EncodedPairs sharing one (possibly truncated) prompt; each cut is recorded in ``report``."""
    cut_prompt, cut_responses = truncate_ids(prompt, responses, limits)
    pairs = []
    for full, cut in zip(responses, cut_responses):
        prompt_dropped, response_dropped = len(prompt) - len(cut_prompt), len(full) - len(cut)
        if report is not None:
            report.record(prompt_dropped, response_dropped, row)
        pairs.append(EncodedPair(tuple(cut_prompt), tuple(cut), bool(prompt_dropped or response_dropped)))
    return pairs


def encode_pair(tokenizer, prompt: str, response: str, max_prompt_length: int = 256,
                max_length: int = 512, truncation_mode: str = "keep_end", add_eos: bool = True,
                report: TruncationReport | None = None) -> EncodedPair:
    """One (prompt, response) tokenised separately, EOS appended, truncated by the authors' rules."""
    limits = TokenLimits(max_length, max_prompt_length, truncation_mode, add_eos)
    return encode_with_limits(tokenizer, prompt, [response], limits, report)[0]


def encode_preference(tokenizer, prompt: str, chosen: str, rejected: str, limits: TokenLimits = TokenLimits(),
                      report: TruncationReport | None = None, row: int | None = None) -> tuple[EncodedPair, EncodedPair]:
    """Chosen and rejected with the SAME prompt tokens (rule 2 decided on the longer response);
    ``row`` (the data row) lets the report say which rows lost tokens."""
    chosen_pair, rejected_pair = encode_with_limits(tokenizer, prompt, [chosen, rejected], limits, report, row)
    return chosen_pair, rejected_pair


def encode_with_limits(tokenizer, prompt: str, responses: list[str], limits: TokenLimits,
                       report: TruncationReport | None = None, row: int | None = None) -> list[EncodedPair]:
    prompt_ids = token_ids(tokenizer, prompt)
    return encode_ids(prompt_ids, [response_token_ids(tokenizer, r, limits) for r in responses], limits, report, row)
