"""Hostile and careless input through the command line: one short message, never a traceback.

The cases are the table in docs/reliability.md ("## Bad input"): each row names a corpus entry in
tests/corpus/ (or one this test generates: bombs and huge values are not committed) and the
message it must get, so the table and the behaviour cannot drift apart. Most cases run in-process
through click's CliRunner (cheap); the generated spec bombs run as real subprocesses under an
address-space limit, so an expansion or a runaway recursion would fail them instead of the machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ldreg.cli import main

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"
DOC = REPO / "docs" / "reliability.md"
MAX_LINE = 400
MAX_LINES = 3
MEMORY_LIMIT = 1 << 30  # bytes of address space for the generated cases' subprocesses
HANG_GUARD_S = 120  # a guard against a hang, not a timing assertion: each case takes well under a second
BASELINES = {"specs/valid.yaml", "data/good.jsonl", "queries/valid.yaml", "specs/include-cycle-b.yaml"}


def doc_rows() -> list[tuple[str, str]]:
    """(corpus entry, expected message) for each row of the Bad input table."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`") and cells[2].startswith("`"):
            rows.append((cells[1].strip("`"), cells[2].strip("`")))
    return rows


ROWS = doc_rows()


# ------------------------------------------------------------------------------ generated inputs

def _spec_text(name: str) -> str:
    return (CORPUS / "specs" / "valid.yaml").read_text().replace("name: valid", f"name: {name}").replace(
        "../data/good.jsonl", str(CORPUS / "data" / "good.jsonl"))


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


GENERATED = {
    "alias-bomb.yaml": lambda: _alias_bomb() + _spec_text("bomb").split("\n", 1)[1],
    "alias-bomb-query.yaml": lambda: "name: bomb\n" + _alias_bomb(),
    "deep-nesting.yaml": lambda: "stages: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep-nesting-query.yaml": lambda: "observe: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "binary.yaml": lambda: bytes(range(256)) * 64,
    "oversized.yaml": lambda: "name: " + "x" * 5_000_000 + "\n",
    "huge-value.yaml": lambda: _spec_text("huge").replace("lr: 1.0e-3", "lr: " + "x" * 500_000),
}


def _command(entry: str, tmp_path: Path) -> tuple[list[str], bool]:
    """The ldreg arguments for a corpus entry, and whether to run them as a real subprocess."""
    head, *rest = entry.split(" ")
    folder, name = head.split("/", 1)
    if folder == "generated":
        content = GENERATED[name]()
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
        if "query" in name:  # the same reader as specs; in-process, as `ldreg query` takes seconds to import
            return ["query", str(path)], False
        return ["run", str(path), "--dry-run"], True
    path = CORPUS / folder / name
    if folder == "data":  # the valid spec, reading this data file instead
        spec = tmp_path / f"uses-{Path(name).stem}.yaml"
        spec.write_text(_spec_text("data-case").replace(str(CORPUS / "data" / "good.jsonl"), str(path)))
        return ["run", str(spec), "--dry-run", *rest], False
    if folder == "queries":
        return ["query", str(path), *rest], False
    return ["run", str(path), "--dry-run", *rest], False


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _ldreg(args: list[str], env: dict[str, str] | None = None, memory_limit: bool = True):
    """``ldreg ARGS`` as a real process: (exit status, stdout + stderr)."""
    proc = subprocess.run([sys.executable, "-m", "ldreg", *args], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, cwd=REPO, env={**os.environ, **(env or {})},
                          preexec_fn=_limit_memory if memory_limit else None)
    return proc.returncode, proc.stdout + proc.stderr


def assert_one_clear_message(status: int, output: str, message: str) -> None:
    assert status == 2, output[-2000:]
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, lines
    assert all(len(line) < MAX_LINE for line in lines), [len(line) for line in lines]
    assert message in " ".join(output.split()), output


# ------------------------------------------------------------------------------------- the table

def test_the_table_lists_every_corpus_file():
    """A corpus file the table does not list would be an untested case."""
    listed = {entry.split(" ")[0] for entry, _ in ROWS}
    on_disk = {f"{p.parent.name}/{p.name}" for p in CORPUS.glob("*/*") if p.is_file()}
    assert on_disk - BASELINES <= listed, sorted(on_disk - BASELINES - listed)
    assert {e for e in listed if e.startswith("generated/")} == {f"generated/{n}" for n in GENERATED}
    assert len(ROWS) >= 80


@pytest.mark.parametrize("entry, message", ROWS, ids=[entry for entry, _ in ROWS])
def test_each_bad_input_gets_one_short_message(entry, message, tmp_path):
    args, as_process = _command(entry, tmp_path)
    if as_process:
        status, output = _ldreg(args)
    else:
        result = CliRunner().invoke(main, args)
        status, output = result.exit_code, result.output
    assert_one_clear_message(status, output, message)


# ----------------------------------------------------------------------------- beyond the table

def test_the_valid_baseline_passes_the_dry_run_and_says_what_it_checked():
    result = CliRunner().invoke(main, ["run", str(CORPUS / "specs" / "valid.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "every row read and converted (9 train, 3 test)" in result.output
    assert "# model.base: tiny" in result.output


def test_a_hub_id_is_not_fetched_at_dry_run_but_a_missing_local_path_is_an_error():
    spec = str(CORPUS / "specs" / "valid.yaml")
    result = CliRunner().invoke(main, ["run", spec, "--dry-run", "with", "model.base=EleutherAI/pythia-14m",
                                       "stages.0.loss=dpo", "stages.0.reference=EleutherAI/pythia-70m"])
    assert result.exit_code == 0, result.output
    assert "model.base: EleutherAI/pythia-14m looks like a hub id: not fetched at dry-run" in result.output
    assert "stages[0].reference: EleutherAI/pythia-70m looks like a hub id" in result.output
    result = CliRunner().invoke(main, ["run", spec, "--dry-run", "with", "model.base=/no/such/model"])
    assert result.exit_code == 2 and "model.base: /no/such/model: no such folder" in result.output


def test_a_real_run_refuses_a_bad_data_row_before_it_starts(tmp_path):
    """Not only --dry-run: `ldreg run` checks first, so it never needs the (here unreachable) database."""
    args, _ = _command("data/missing-chosen.jsonl", tmp_path)
    args.remove("--dry-run")
    status, output = _ldreg([*args, "--no-progress"], env={"LDREG_MONGO_URL": "mongodb://127.0.0.1:9/"},
                            memory_limit=False)
    assert_one_clear_message(status, output, "row 3 (line 4): missing field 'chosen'")


def test_spec_errors_do_not_wait_for_torch():
    """A file-level mistake is reported before plugins (and torch) load, so it is instant to fix."""
    bad = CORPUS / "specs" / "duplicate-key.yaml"
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ldreg.cli import main\n"
            f"r = CliRunner().invoke(main, ['run', {str(bad)!r}, '--dry-run'])\n"
            "print(r.exit_code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how):
    args = ["run", "no-such-spec.yaml"]
    status, output = _ldreg(["--debug", *args] if how == "flag" else args,
                            env={"LDREG_DEBUG": "1"} if how == "env" else None, memory_limit=False)
    assert status != 0 and "Traceback" in output and "SpecError: " in output
    assert "no-such-spec.yaml: no such file" in output


def test_without_debug_an_unexpected_error_is_one_line_with_the_hint(tmp_path):
    """A bug (here a real click command that fails in a way no check foresaw) still prints no traceback."""
    import click

    from ldreg.cli import DEBUG_HINT, friendly_errors

    @click.command()
    @friendly_errors
    def broken():
        return {}["a key no spec has"]

    result = CliRunner().invoke(broken, [])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "internal error: KeyError: 'a key no spec has'" in result.output and DEBUG_HINT in result.output
    result = CliRunner(env={"LDREG_DEBUG": "1"}).invoke(broken, [])
    assert isinstance(result.exception, KeyError)  # with debug it propagates: the traceback is printed


def test_a_truncated_response_is_warned_at_run_start(tmp_path, mongo_server, monkeypatch):
    """A response far beyond data.max_length: the console says how many tokens were lost, in which rows."""
    monkeypatch.setenv("LDREG_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("LDREG_DB", "bad_input_truncation")
    rows = [json.loads(line) for line in (CORPUS / "data" / "good.jsonl").read_text().splitlines()]
    rows[2]["chosen"] = " " + " ".join(["the quick brown fox"] * 2000)
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "long.yaml"
    spec.write_text(_spec_text("long").replace(str(CORPUS / "data" / "good.jsonl"), str(data)))
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress", "with", "probing.every=100",
                                       "checkpoint_every=0"])
    assert result.exit_code == 0, result.output[-3000:]
    warning = next(line for line in result.output.splitlines() if line.startswith("warning: truncated"))
    lost = int(re.search(r"row 2 \(([\d,]+) tokens\)", warning).group(1).replace(",", ""))
    assert lost > 1000 and "raise data.max_length" in warning
    assert warning.index("warning") < result.output.index("COMPLETED")  # at the start, not only in the result
