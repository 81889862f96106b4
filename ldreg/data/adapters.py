"""Dataset adapters: Anthropic-HH, UltraFeedback (binarized) and plain JSON lines.

Every format is read through ``datasets.load_dataset`` (a hub id for real use, a local file or
folder for tests and offline work) and turned into ``PreferenceExample``s, so nothing downstream
knows which dataset it came from.

- ``hh``: rows hold two whole dialogues, ``chosen`` and ``rejected``. The prompt is everything up
  to and including the last "\\n\\nAssistant:" (the DPO repo's ``extract_anthropic_prompt``); the
  responses are what follows, leading space kept (the model sees " Sure" after "Assistant:").
- ``ultrafeedback``: ``prompt`` plus ``chosen``/``rejected`` message lists; the response is the
  content of the last assistant message.
- ``jsonl``: TRL's names ``prompt``/``chosen``/``rejected`` as strings; an optional
  ``chosen_prob`` (soft preference label) is kept in ``extras``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from ldreg.data.errors import DataError
from ldreg.responses import PreferenceExample

FORMATS = ("auto", "hh", "ultrafeedback", "jsonl")
ASSISTANT = "\n\nAssistant:"
HUB_FORMATS = {"anthropic/hh-rlhf": "hh", "huggingfaceh4/ultrafeedback_binarized": "ultrafeedback"}
# UltraFeedback binarized names its preference splits train_prefs/test_prefs.
HUB_SPLITS = {"huggingfaceh4/ultrafeedback_binarized": {"train": "train_prefs", "test": "test_prefs"}}
SOFT_LABEL_FIELDS = ("chosen_prob",)


def split_hh_dialogue(dialogue: str, where: str = "dialogue") -> tuple[str, str]:
    """(prompt up to and including the last "\\n\\nAssistant:", the response after it)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: no {ASSISTANT!r} turn in an HH dialogue; is this really format 'hh'?")
    end = cut + len(ASSISTANT)
    return dialogue[:end], dialogue[end:]


def last_assistant_content(messages: Any, where: str) -> str:
    """The content of the last assistant message of a chat-format response."""
    if isinstance(messages, str):
        return messages
    for message in reversed(list(messages or [])):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            return str(message.get("content", ""))
    raise DataError(f"{where}: no assistant message in the list; expected [{{'role': 'assistant', ...}}]")


def _require(row: Mapping[str, Any], fields: tuple[str, ...], fmt: str, index: int) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise DataError(
            f"row {index}: format {fmt!r} needs fields {', '.join(fields)}; missing {', '.join(missing)} "
            f"(found {', '.join(sorted(row)) or 'none'}); pass format= to pick another format"
        )


def example_from_hh(row: Mapping[str, Any], index: int) -> PreferenceExample:
    _require(row, ("chosen", "rejected"), "hh", index)
    prompt, chosen = split_hh_dialogue(row["chosen"], f"row {index} field 'chosen'")
    rejected_prompt, rejected = split_hh_dialogue(row["rejected"], f"row {index} field 'rejected'")
    extras = {} if rejected_prompt == prompt else {"rejected_prompt": rejected_prompt}
    return PreferenceExample(index, prompt, chosen, rejected, extras)


def example_from_ultrafeedback(row: Mapping[str, Any], index: int) -> PreferenceExample:
    _require(row, ("prompt", "chosen", "rejected"), "ultrafeedback", index)
    chosen = last_assistant_content(row["chosen"], f"row {index} field 'chosen'")
    rejected = last_assistant_content(row["rejected"], f"row {index} field 'rejected'")
    extras = {k: row[k] for k in ("prompt_id", "score_chosen", "score_rejected") if k in row}
    return PreferenceExample(index, str(row["prompt"]), chosen, rejected, extras)


def example_from_jsonl(row: Mapping[str, Any], index: int) -> PreferenceExample:
    _require(row, ("prompt", "chosen", "rejected"), "jsonl", index)
    extras: dict[str, Any] = {}
    for name in SOFT_LABEL_FIELDS:
        if row.get(name) is not None:
            value = float(row[name])
            if not 0.0 <= value <= 1.0:
                raise DataError(f"row {index}: {name}={value} is not a probability in [0, 1]")
            extras[name] = value
    return PreferenceExample(index, str(row["prompt"]), str(row["chosen"]), str(row["rejected"]), extras)


CONVERTERS = {"hh": example_from_hh, "ultrafeedback": example_from_ultrafeedback, "jsonl": example_from_jsonl}


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess the format from one row's fields (and types)."""
    if "prompt" not in row and isinstance(row.get("chosen"), str) and ASSISTANT in row["chosen"]:
        return "hh"
    if "prompt" in row and isinstance(row.get("chosen"), (list, tuple)):
        return "ultrafeedback"
    if "prompt" in row and isinstance(row.get("chosen"), str):
        return "jsonl"
    raise DataError(
        f"cannot tell the dataset format from fields {', '.join(sorted(row)) or 'none'}; "
        f"expected HH dialogues (chosen/rejected), UltraFeedback (prompt + message lists) or "
        f"prompt/chosen/rejected strings; pass format= one of {', '.join(FORMATS[1:])}"
    )


def _open(source: str | Path, split: str, data_dir: str | None):
    """A ``datasets`` split from a local file/folder or a hub id."""
    import datasets

    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        builder = "json" if suffix in (".json", ".jsonl") else suffix.lstrip(".") or "json"
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
    hub_split = HUB_SPLITS.get(str(source).lower(), {}).get(split, split)
    try:
        return datasets.load_dataset(str(source), data_dir=data_dir, split=hub_split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise DataError(
            f"cannot load dataset {str(source)!r} (split {hub_split!r}, data_dir {data_dir!r}): {exc}. "
            f"Give an existing local file/folder, or a hub id with network or a warm HF cache"
        ) from exc


def load_preferences(source: str | Path, format: str = "auto", split: str = "train",
                     limit: int | None = None, data_dir: str | None = None) -> list[PreferenceExample]:
    """The preference examples of ``source`` (hub id, local file or folder), ids 0..n-1.

    ``format`` is auto|hh|ultrafeedback|jsonl; auto uses the hub id if known, else the first row.
    ``data_dir`` selects a subset on the hub, e.g. ``helpful-base`` for Anthropic/hh-rlhf.
    """
    return list(iter_preferences(source, format, split, limit, data_dir))


def iter_preferences(source: str | Path, format: str = "auto", split: str = "train",
                     limit: int | None = None, data_dir: str | None = None) -> Iterator[PreferenceExample]:
    if format not in FORMATS:
        raise DataError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    table = _open(source, split, data_dir)
    fmt = format if format != "auto" else HUB_FORMATS.get(str(source).lower())
    count = len(table) if limit is None else min(limit, len(table))
    for index in range(count):
        row = table[index]
        if fmt is None:
            fmt = detect_format(row)
        yield CONVERTERS[fmt](row, index)


def write_jsonl(examples, path: str | Path) -> Path:
    """Write examples as TRL-style JSON lines (prompt/chosen/rejected + extras), e.g. for tests."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected,
                                **ex.extras}, ensure_ascii=False) + "\n")
    return path
