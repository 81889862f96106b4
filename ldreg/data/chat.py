"""HH dialogues in a tokenizer's chat template, for instruct models (``data.chat_template: true``).

An HH prompt is plain text, "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:". An instruct model
was tuned on its own turn markers (SmolLM2: ``<|im_start|>user ... <|im_end|>``), so its
log-probabilities of a response are only comparable with its training when the dialogue is
rendered in that template. The turns become messages, the template renders them with the
assistant's turn opened, and the response loses HH's leading space (the template ends the turn
opening with a newline). The response still ends with the tokenizer's own EOS (the tokeniser
step appends it), which for a chat model is its end-of-turn token.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ldreg.data.errors import DataError
from ldreg.responses import PreferenceExample

_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an HH prompt as chat messages; the trailing empty assistant turn is dropped."""
    parts = _TURN.split(prompt)
    messages = []
    for role, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages:
        raise DataError(f"chat_template: no Human/Assistant turns in prompt {prompt[:60]!r}; "
                        f"set data.chat_template: false for data that is not HH dialogue")
    return messages


def chat_prompt(tokenizer, prompt: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.chat_template: this model's tokenizer has no chat template; "
                        "set data.chat_template: false (the HH text format is used then)")
    return tokenizer.apply_chat_template(hh_messages(prompt), tokenize=False, add_generation_prompt=True)


def chat_example(tokenizer, example: PreferenceExample) -> PreferenceExample:
    return replace(example, prompt=chat_prompt(tokenizer, example.prompt),
                   chosen=example.chosen.lstrip(" "), rejected=example.rejected.lstrip(" "))
