"""Dataset adapters (HH, UltraFeedback, JSON lines) and the authors' truncation rules."""

from __future__ import annotations

import json

import pytest

from ldreg.data.adapters import load_preferences, split_hh_dialogue
from ldreg.data.errors import DataError
from ldreg.data.tokenize import TokenLimits, TruncationReport, encode_pair, encode_preference, truncate_ids


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- adapters ---------------------------------------------------------------------------------

def test_hh_prompt_is_everything_up_to_the_last_assistant_turn(tmp_path, authors_records):
    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in authors_records[:5]]
    examples = load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows), format="auto")
    assert [e.id for e in examples] == [0, 1, 2, 3, 4]
    for e, r in zip(examples, authors_records):
        assert (e.prompt, e.chosen, e.rejected) == (r["prompt"], r["chosen"], r["rejected"])
    assert authors_records[0]["prompt"].count("\n\nAssistant:") == 2  # a multi-turn dialogue


def test_hh_split_by_hand():
    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Like this."
    assert split_hh_dialogue(dialogue) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:", " Like this.")
    with pytest.raises(DataError, match="Assistant"):
        split_hh_dialogue("\n\nHuman: no answer")


def test_ultrafeedback_takes_the_last_assistant_message(tmp_path):
    rows = [{"prompt": "Name a colour.", "prompt_id": "p0", "score_chosen": 8.0, "score_rejected": 3.0,
             "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}]}]
    (example,) = load_preferences(write_jsonl(tmp_path / "uf.jsonl", rows), split="test")
    assert (example.prompt, example.chosen, example.rejected) == ("Name a colour.", "Blue.", "Seven.")
    assert example.extras == {"prompt_id": "p0", "score_chosen": 8.0, "score_rejected": 3.0}


def test_jsonl_keeps_soft_labels_and_respects_limit(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "chosen_prob": 0.25 * i} for i in range(4)]
    examples = load_preferences(write_jsonl(tmp_path / "p.jsonl", rows), format="jsonl", limit=3)
    assert [(e.prompt, e.chosen, e.rejected, e.extras["chosen_prob"]) for e in examples] == [
        ("q0", "a0", "b0", 0.0), ("q1", "a1", "b1", 0.25), ("q2", "a2", "b2", 0.5)]


def test_authors_probe_file_reads_as_plain_jsonl(tmp_path, authors_records):
    path = write_jsonl(tmp_path / "probe.jsonl", authors_records[:3])
    assert [e.chosen for e in load_preferences(path)] == [r["chosen"] for r in authors_records[:3]]


def test_wrong_format_names_the_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_preferences(path)
    with pytest.raises(DataError, match=r"x\.jsonl: row 0 \(line 1\): missing fields 'prompt', 'chosen', 'rejected'"):
        load_preferences(path, format="jsonl")
    with pytest.raises(DataError, match="unknown dataset format"):
        load_preferences(path, format="csv")


GOOD = {"prompt": "Q?", "chosen": " yes.", "rejected": " no."}


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "Q?", "rejected": " no."}, r"row 2 \(line 3\): missing field 'chosen'"),
    ({**GOOD, "chosen": None}, r"row 2 \(line 3\): field 'chosen' is null"),
    ({**GOOD, "rejected": ["a", "b"]}, r"row 2 \(line 3\): field 'rejected' must be a string, got list"),
    ({**GOOD, "chosen": ""}, r"row 2 \(line 3\): field 'chosen' is empty"),
    ({**GOOD, "chosen_prob": "high"}, r"row 2 \(line 3\): chosen_prob='high' is not a probability"),
])
def test_a_bad_row_is_never_trained_on_as_the_string_none(tmp_path, bad_row, message):
    """The loader the run itself uses (not only --dry-run) refuses the row, naming file, row and field."""
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad_row, GOOD])
    with pytest.raises(DataError, match=r"d\.jsonl: " + message):
        load_preferences(path)
    assert len(load_preferences(path, limit=2)) == 2  # rows before it are fine (and limit stops early)


@pytest.mark.parametrize("content, message", [
    (b"", r"empty \(no rows\)"),
    (b"\n  \n", r"empty \(no rows\)"),
    (b'{"prompt": "caf\xe9"}\n', r"line 1: byte 0xe9 at column \d+ is not UTF-8"),
    (b'{"prompt": "Q?", "chosen": " a"\n', r"line 1: not valid JSON at column \d+"),
    (b'{"prompt": "Q?", "chosen": " a", "rejected": " b"}\n["Q?", " a", " b"]\n', r"line 2: expected a JSON object"),
    (b'["Q?", " a", " b"]\n', r"item 0: expected a JSON object, got str"),
    (b'\x00\x01\x02binary', r"a binary file, not JSON lines"),
])
def test_a_broken_file_is_one_message_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"d\.jsonl: " + message):
        load_preferences(path)


def test_a_json_array_file_reads_like_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "prompt": "Other?"}]), encoding="utf-8")
    assert [e.prompt for e in load_preferences(path)] == ["Q?", "Other?"]
    path.write_text(json.dumps([GOOD, {"prompt": "Other?"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): missing fields 'chosen', 'rejected'"):
        load_preferences(path)


# --- truncation -------------------------------------------------------------------------------

class CharTokenizer:
    """One token per character (ids = code points), EOS 0: token counts checkable by hand."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_short_pair_is_untouched_and_gets_eos():
    report = TruncationReport()
    pair = encode_pair(CharTokenizer(), "abc", "xy", max_prompt_length=4, max_length=10, report=report)
    assert pair.prompt_ids == (97, 98, 99) and pair.response_ids == (120, 121, 0) and not pair.truncated
    assert report.as_dict()["truncated"] == 0 and report.pairs == 1


def test_long_prompt_keeps_its_end():
    # prompt 8 + response 3 (2 + EOS) = 11 > 10: prompt cut to its last 4; 4 + 3 fits.
    report = TruncationReport()
    pair = encode_pair(CharTokenizer(), "abcdefgh", "xy", max_prompt_length=4, max_length=10, report=report)
    assert "".join(map(chr, pair.prompt_ids)) == "efgh" and pair.response_ids == (120, 121, 0)
    assert pair.truncated and report.prompt_truncated == 1 and report.prompt_tokens_dropped == 4
    assert report.response_truncated == 0


def test_keep_start_mode_keeps_the_prompt_start():
    pair = encode_pair(CharTokenizer(), "abcdefgh", "xy", 4, 10, truncation_mode="keep_start")
    assert "".join(map(chr, pair.prompt_ids)) == "abcd"


def test_long_response_is_cut_to_max_length_minus_max_prompt_length():
    # prompt 2 + response 13 (12 + EOS) = 15 > 10: prompt (2 <= 4) unchanged, still too long:
    # response cut to 10 - 4 = 6 tokens, EOS lost, as in the authors' code.
    report = TruncationReport()
    pair = encode_pair(CharTokenizer(), "ab", "0123456789AB", 4, 10, report=report)
    assert pair.prompt_ids == (97, 98) and "".join(map(chr, pair.response_ids)) == "012345"
    assert report.response_truncated == 1 and report.response_tokens_dropped == 7 and report.prompt_truncated == 0
    assert "1 of 1 pairs truncated" in report.summary()


def test_preference_pair_shares_prompt_decided_on_longer_response():
    limits = TokenLimits(max_length=10, max_prompt_length=4)
    chosen, rejected = encode_preference(CharTokenizer(), "abcdefg", "x", "wxyz", limits)
    # longest response 5 (4 + EOS): 7 + 5 > 10, so both keep the prompt's last 4 tokens.
    assert chosen.prompt_ids == rejected.prompt_ids == tuple(map(ord, "defg"))
    assert chosen.truncated and rejected.truncated


def test_truncate_ids_with_both_cuts():
    prompt, (resp,) = truncate_ids(list(range(20)), [list(range(100, 120))], TokenLimits(16, 6))
    assert prompt == list(range(14, 20)) and resp == list(range(100, 110))


def test_limits_are_validated():
    with pytest.raises(DataError, match="max_prompt_length"):
        TokenLimits(max_length=8, max_prompt_length=8)
    with pytest.raises(DataError, match="truncation_mode"):
        TokenLimits(truncation_mode="middle")


def test_real_tokenizer_tokenises_response_separately(tiny_model_dir):
    from ldreg.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    pair = encode_pair(tok, "\n\nHuman: hi\n\nAssistant:", " Hello there", 256, 512)
    assert pair.response_ids[-1] == tok.eos_token_id
    assert tok.decode(list(pair.response_ids[:-1])) == " Hello there"
    assert tok.decode(list(pair.prompt_ids)) == "\n\nHuman: hi\n\nAssistant:"


def test_the_report_names_the_rows_that_lost_tokens():
    tok = CharTokenizer()
    limits = TokenLimits(max_length=20, max_prompt_length=8, truncation_mode="keep_start")
    report = TruncationReport()
    for row, response in enumerate(["short", "x" * 500, "y" * 40]):
        encode_preference(tok, "prompt", response, "no", limits, report, row=row)
    assert report.rows == {1: 500 + 1 - 12, 2: 40 + 1 - 12}  # each cut to 12 response tokens, EOS included
    warning = report.warning()
    assert warning.startswith("warning: truncated 2 of 6 pairs")  # (prompt, response) pairs: 2 per row
    assert "row 1 (489 tokens), row 2 (29 tokens)" in warning
    assert report.as_dict()["rows"] == 2  # the run's result stores the count (BSON keys must be strings)
    assert TruncationReport().warning() is None
