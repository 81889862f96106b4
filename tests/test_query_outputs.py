"""run_query and compare_runs end to end against the real server: every format, offline HTML, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_query_data import populate_all

from ldreg.query.compare import compare_runs
from ldreg.query.errors import QueryError
from ldreg.query.outputs import FORMATS, assert_offline
from ldreg.query.execute import run_query
from ldreg.query.select import select_runs


@pytest.fixture
def filled(db):
    populate_all(db)
    return db


def _spec(tmp_path, text: str):
    path = tmp_path / "q.yaml"
    path.write_text(text)
    return path


CURVES = """
name: curves
select: {name: sft-dpo}
observe:
  - {response_types: [chosen, rejected]}
  - {quantity: argmax_logp, response_types: [chosen], label: argmax confidence}
aggregate: {align: dpo}
chart: {title: Curves}
"""


def test_every_format_is_written_and_the_html_is_offline(filled, tmp_path):
    folder = run_query(_spec(tmp_path, CURVES), tmp_path / "out", db=filled)
    for fmt in FORMATS:
        assert (folder / f"curves.{fmt}").stat().st_size > 0, fmt
    html = (folder / "curves.html").read_text()
    assert_offline(html)
    assert "cdn.jsdelivr" not in html and "<script src" not in html.replace(" ", "")
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "curves.svg").read_text().lstrip().startswith("<svg")
    assert json.loads((folder / "curves.json").read_text())["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    frame = pd.read_parquet(folder / "curves.parquet")
    assert set(frame["series"]) == {"chosen", "rejected", "argmax confidence"} and set(frame["run_id"]) == {1, 2}
    assert len(pd.read_csv(folder / "curves.csv")) == len(frame) == 2 * 6 * 3


def test_one_file_by_its_suffix_and_runs_override(filled, tmp_path):
    out = run_query(_spec(tmp_path, CURVES), tmp_path / "one.csv", ["runs=3", "aggregate.align=null"], db=filled)
    assert out == tmp_path / "one.csv" and set(pd.read_csv(out)["run_id"]) == {3}
    assert not (tmp_path / "one.png").exists()


def test_unsupported_output_format_lists_the_supported(filled, tmp_path):
    with pytest.raises(QueryError, match=r"unsupported output format 'pdf'; supported: html, png, svg, json, csv, parquet"):
        run_query(_spec(tmp_path, CURVES), tmp_path / "x.pdf", db=filled)


def test_no_runs_says_so_and_shows_the_nearest(filled, tmp_path):
    with pytest.raises(QueryError) as err:
        run_query(_spec(tmp_path, CURVES), tmp_path / "x.png", ["name=sft-dp"], db=filled)
    message = str(err.value)
    assert "selects no runs" in message and "no run at all matches name='sft-dp'" in message
    assert "close to 'sft-dp': 'sft-dpo'" in message and "latest runs: #3 sft-ipo COMPLETED" in message
    with pytest.raises(QueryError, match=r"each filter matches some runs .* but no run matches them all"):
        select_runs(filled, name="sft-ipo", tags=["paper"])


def test_colour_by_a_config_key(filled, tmp_path):
    out = run_query(_spec(tmp_path, CURVES), tmp_path / "c.csv", ["select.name=null", "chart.color=stages.1.loss",
                                                                  "aggregate.align=null"], db=filled)
    assert set(pd.read_csv(out)["stages.1.loss"]) == {"dpo", "ipo"}
    with pytest.raises(QueryError, match=r"chart.color: 'stages.1.los' .*did you mean 'stages.1.loss'"):
        run_query(_spec(tmp_path, CURVES), tmp_path / "c.csv", ["chart.color=stages.1.los"], db=filled)


def test_influence_heatmap_holds_the_per_pair_means(filled, tmp_path):
    spec = _spec(tmp_path, """
name: infl
select: {ids: [1]}
observe: [{kind: influence, quantity: delta_logp, probe_set: null}]
chart: {kind: influence}
""")
    out = run_query(spec, tmp_path / "infl", db=filled)
    frame = pd.read_csv(out / "infl.csv")
    means = {(u, o): m for u, o, m in zip(frame.update_type, frame.response_type, frame["mean"])}
    assert means[("chosen", "chosen")] == pytest.approx(1.15) and means[("rejected", "chosen")] == pytest.approx(-0.35)
    assert len(means) == 6 and (out / "infl.png").stat().st_size > 0


def test_entk_heatmap_reshapes_the_gram(filled, tmp_path):
    spec = _spec(tmp_path, "name: k\nselect: {ids: [1]}\nobserve: [{kind: entk, quantity: gram}]\nchart: {kind: entk}\n")
    out = run_query(spec, tmp_path / "k", db=filled)
    frame = pd.read_csv(out / "k.csv")
    cell = frame[(frame.example_i == 8) & (frame.example_j == 9)]["value"]
    assert cell.tolist() == [2.0] and len(frame) == 9
    with pytest.raises(QueryError, match=r"run #2 has no eNTK observation; enable it with probing.entk"):
        run_query(spec, tmp_path / "k2", ["runs=2"], db=filled)


def test_compare_page_is_self_contained_with_the_differences(filled, tmp_path):
    page = compare_runs([1, 3], tmp_path / "cmp.html", db=filled)
    text = page.read_text()
    assert_offline(text)
    assert "<th>stages.1.loss</th><td>dpo</td><td>ipo</td>" in text
    assert text.count("vegaEmbed('#chart") == 3  # curves, influence, eNTK
    with pytest.raises(QueryError, match="one HTML page"):
        compare_runs([1], tmp_path / "cmp.png", db=filled)


def test_the_vega_script_is_bundled_once_and_a_damaged_copy_is_replaced(tmp_path, monkeypatch):
    """Bundling Vega takes seconds a page, so it is kept under LDREG_HOME by the installed
    versions; a cached file that is not a whole bundle is bundled again and replaced."""
    from ldreg.query import outputs

    monkeypatch.setenv("LDREG_HOME", str(tmp_path))
    outputs.inline_bundle.cache_clear()
    try:
        first = outputs.inline_bundle()  # bundled, then written
        (cached,) = (tmp_path / "cache" / "vega").glob("bundle-*.js")
        assert cached.read_text(encoding="utf-8") == first and "vegaEmbed" in first
        cached.write_text("/* cut short */", encoding="utf-8")
        outputs.inline_bundle.cache_clear()
        assert outputs.inline_bundle() == first and cached.read_text(encoding="utf-8") == first
        assert not list(cached.parent.glob("*.partial"))
    finally:
        outputs.inline_bundle.cache_clear()  # other tests' pages use their own LDREG_HOME's copy
