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
- ``unpaired``: TRL's unpaired preference rows ``prompt``/``completion`` (strings) and ``label``
  (true: desirable, false: undesirable), for KTO and BCO. Each row is one example holding its
  completion in ``chosen`` (``rejected`` empty) and ``extras["label"]``; ``ldreg.data.unpaired``
  says how such data is trained and probed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from ldreg.data.errors import DataError
from ldreg.errors import preview
from ldreg.responses import PreferenceExample

FORMATS = ("auto", "hh", "ultrafeedback", "jsonl", "unpaired")
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
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"{where}: expected a list of messages or a string, got {_kind(messages)}")
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            content = message.get("content")
            if not isinstance(content, str):
                raise DataError(f"{where}: the last assistant message has no text 'content' (got {_kind(content)})")
            return content
    raise DataError(f"{where}: no assistant message in the list; expected [{{'role': 'assistant', ...}}]")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(row: Mapping[str, Any], fields: tuple[str, ...], fmt: str, where: str,
             text: tuple[str, ...] = ()) -> None:
    """Each of ``fields`` present and not null; each of ``text`` a non-empty string.

    A missing or null field is an error, never the string 'None' trained on."""
    missing = [f for f in fields if f not in row]
    if missing:
        many = len(missing) > 1
        raise DataError(
            f"{where}: missing field{'s' if many else ''} {', '.join(repr(m) for m in missing)} (format {fmt!r} "
            f"needs {', '.join(fields)}; found {', '.join(sorted(map(str, row)))[:200] or 'none'}); "
            f"add {'them' if many else 'it'} to this row or remove the row"
        )
    for f in fields:
        if row[f] is None:
            raise DataError(f"{where}: field {f!r} is null; give it a value or remove the row")
    for f in text:
        if not isinstance(row[f], str):
            raise DataError(f"{where}: field {f!r} must be a string, got {_kind(row[f])} {preview(row[f], 40)}")
        if f != "prompt" and not row[f].strip():
            raise DataError(f"{where}: field {f!r} is empty; give it a response or remove the row")


def example_from_hh(row: Mapping[str, Any], index: int, where: str = "") -> PreferenceExample:
    where = where or f"row {index}"
    _require(row, ("chosen", "rejected"), "hh", where, text=("chosen", "rejected"))
    prompt, chosen = split_hh_dialogue(row["chosen"], f"{where}: field 'chosen'")
    rejected_prompt, rejected = split_hh_dialogue(row["rejected"], f"{where}: field 'rejected'")
    extras = {} if rejected_prompt == prompt else {"rejected_prompt": rejected_prompt}
    return PreferenceExample(index, prompt, chosen, rejected, extras)


def example_from_ultrafeedback(row: Mapping[str, Any], index: int, where: str = "") -> PreferenceExample:
    where = where or f"row {index}"
    _require(row, ("prompt", "chosen", "rejected"), "ultrafeedback", where, text=("prompt",))
    chosen = last_assistant_content(row["chosen"], f"{where}: field 'chosen'")
    rejected = last_assistant_content(row["rejected"], f"{where}: field 'rejected'")
    extras = {k: row[k] for k in ("prompt_id", "score_chosen", "score_rejected") if k in row}
    return PreferenceExample(index, row["prompt"], chosen, rejected, extras)


def example_from_jsonl(row: Mapping[str, Any], index: int, where: str = "") -> PreferenceExample:
    where = where or f"row {index}"
    _require(row, ("prompt", "chosen", "rejected"), "jsonl", where, text=("prompt", "chosen", "rejected"))
    extras: dict[str, Any] = {}
    for name in SOFT_LABEL_FIELDS:
        if row.get(name) is not None:
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise DataError(f"{where}: {name}={preview(value, 40)} is not a probability in [0, 1]")
            extras[name] = float(value)
    return PreferenceExample(index, row["prompt"], row["chosen"], row["rejected"], extras)


def example_from_unpaired(row: Mapping[str, Any], index: int, where: str = "") -> PreferenceExample:
    """TRL's unpaired row: prompt, completion and a bool label (true = desirable)."""
    where = where or f"row {index}"
    _require(row, ("prompt", "completion", "label"), "unpaired", where, text=("prompt", "completion"))
    label = row["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true (desirable) or false (undesirable), "
                        f"got {_kind(label)} {preview(label, 40)}; write it as a JSON boolean")
    return PreferenceExample(index, row["prompt"], row["completion"], "", {"label": label})


CONVERTERS = {"hh": example_from_hh, "ultrafeedback": example_from_ultrafeedback, "jsonl": example_from_jsonl,
              "unpaired": example_from_unpaired}


def detect_format(row: Mapping[str, Any], where: str = "row 0") -> str:
    """Guess the format from one row's fields (and types); a row that is nearly a format gets that
    format's own message (which field is missing), not a shrug."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "completion" in row or ("label" in row and "chosen" not in row):
        _require(row, ("prompt", "completion", "label"), "unpaired", where, text=("prompt", "completion"))
        return "unpaired"
    if "prompt" not in row and any(isinstance(r, str) and ASSISTANT in r for r in (chosen, rejected)):
        _require(row, ("chosen", "rejected"), "hh", where, text=("chosen", "rejected"))
        return "hh"
    if "prompt" in row and isinstance(chosen, (list, tuple)):
        return "ultrafeedback"
    if "prompt" in row and (isinstance(chosen, str) or isinstance(rejected, str) or chosen is None):
        _require(row, ("prompt", "chosen", "rejected"), "jsonl", where, text=("prompt", "chosen", "rejected"))
        return "jsonl"
    raise DataError(
        f"{where}: cannot tell the dataset format from fields {', '.join(sorted(map(str, row)))[:200] or 'none'}; "
        f"expected prompt/chosen/rejected strings, prompt/completion/label (unpaired), HH dialogues or "
        f"UltraFeedback message lists; "
        f"fix the row or set data.format ({', '.join(FORMATS[1:])})"
    )


JSON_SUFFIXES = ("", ".json", ".jsonl")


def is_json_file(path: Path) -> bool:
    """Read by ldreg itself (every row checked, errors naming file and line), not by ``datasets``."""
    return path.is_file() and path.suffix.lower() in JSON_SUFFIXES


def read_json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each JSON object in a JSON-lines file (or a JSON array of objects).

    Non-UTF-8 bytes, broken JSON, rows that are not objects and empty files are DataErrors
    naming the file and line, so a bad file is one message, never a traceback or a silent skip.
    """
    try:
        with path.open("rb") as f:
            head = f.read(4096)
            if b"\x00" in head:
                raise DataError(f"{path}: a binary file, not JSON lines; give one JSON object per line")
            f.seek(0)
            if head.lstrip().startswith(b"["):
                yield from _array_rows(path, f.read())
                return
            count = 0
            for number, raw in enumerate(f, start=1):
                text = _decode_line(raw, path, number)
                if not text.strip():
                    continue
                yield number, _parse_row(text.rstrip("\r\n"), path, number)
                count += 1
    except PermissionError:
        raise DataError(f"{path}: not readable (permission denied); check its permissions") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; give a JSON-lines file") from None
    if not count:
        raise DataError(f"{path}: empty (no rows); a data file holds one JSON object per line")


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: line {number}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not "
                        f"UTF-8; save the file as UTF-8") from None


def _parse_row(text: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {number}: not valid JSON at column {exc.colno} ({exc.msg.removesuffix(' at')}); "
                        f"each line must be one JSON object") from None
    except RecursionError:
        raise DataError(f"{path}: line {number}: JSON nested too deeply; each line must be one flat object") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}: line {number}: expected a JSON object like "
                        f"{{\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}}, got {_kind(row)}")
    return row


def _array_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    text = _decode_line(raw, path, 1) if b"\n" not in raw else None
    if text is None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the file as UTF-8") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON at column {exc.colno} ({exc.msg.removesuffix(' at')})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; give a list of flat objects") from None
    if not rows:
        raise DataError(f"{path}: empty (no rows); give a list of objects or one JSON object per line")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {_kind(row)}")
        yield i + 1, row


def _open(source: str | Path, split: str, data_dir: str | None):
    """A ``datasets`` split from a local folder or non-JSON file, or a hub id."""
    import datasets

    path = Path(source)
    if path.is_file():
        builder = path.suffix.lower().lstrip(".")
        try:
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; each is a file the user can fix
            raise DataError(f"{path}: cannot read it as {builder!r} ({type(exc).__name__}: {preview(str(exc), 150, quote=False)}); "
                            f"give a .jsonl file of prompt/chosen/rejected rows") from None
    hub_split = HUB_SPLITS.get(str(source).lower(), {}).get(split, split)
    try:
        return datasets.load_dataset(str(source), data_dir=data_dir, split=hub_split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise DataError(
            f"cannot load dataset {preview(str(source))} (split {hub_split!r}, data_dir {data_dir!r}): "
            f"{preview(str(exc), 150, quote=False)}. Give an existing local file/folder, or a hub id with "
            f"network or a warm HF cache"
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
    """Each row converted, or a DataError naming the file (or hub id), the row and the field."""
    if format not in FORMATS:
        raise DataError(f"unknown dataset format {preview(format)}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    fmt = format if format != "auto" else HUB_FORMATS.get(str(source).lower())
    for index, where, row in _rows(source, split, data_dir, limit):
        if fmt is None:
            fmt = detect_format(row, where)
        elif (fmt == "unpaired") != ("completion" in row) and format == "auto":
            raise DataError(f"{where}: mixes {'unpaired rows (prompt/completion/label)' if fmt == 'unpaired' else 'pairs'} "
                            f"with {'pairs' if fmt == 'unpaired' else 'unpaired rows (prompt/completion/label)'} "
                            f"(row 0 set the format to {fmt!r}); keep one kind per data set")
        yield CONVERTERS[fmt](row, index, where)


def _rows(source: str | Path, split: str, data_dir: str | None, limit: int | None
          ) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """(row index, 'FILE: row i (line n)', row) for at most ``limit`` rows."""
    if limit == 0:
        return
    path = Path(source)
    if is_json_file(path):
        for index, (line, row) in enumerate(read_json_rows(path)):
            yield index, f"{path}: row {index} (line {line})", row
            if limit is not None and index + 1 >= limit:
                return
        return
    table = _open(source, split, data_dir)
    count = len(table) if limit is None else min(limit, len(table))
    if not count and limit is None:
        raise DataError(f"{source}: no rows in split {split!r}; check data.split")
    for index in range(count):
        yield index, f"{source}: row {index}", table[index]


def write_jsonl(examples, path: str | Path) -> Path:
    """Write examples as TRL-style JSON lines (prompt/chosen/rejected + extras; unpaired examples as
    prompt/completion/label), e.g. for tests."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            if "label" in ex.extras:
                f.write(json.dumps({"prompt": ex.prompt, "completion": ex.chosen, "label": ex.extras["label"]},
                                   ensure_ascii=False) + "\n")
                continue
            f.write(json.dumps({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected,
                                **ex.extras}, ensure_ascii=False) + "\n")
    return path
