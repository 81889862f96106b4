"""Writing a chart and its data: self-contained HTML, PNG, SVG, the Vega-Lite JSON, CSV, Parquet.

HTML embeds Vega, Vega-Lite and vega-embed (vl-convert's bundle), so a page opens offline and
years later; ``assert_offline`` checks that nothing in it is fetched from a CDN.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Sequence

import altair as alt
import pandas as pd

from ldreg import config
from ldreg.query.charts import render
from ldreg.query.errors import QueryError

FORMATS = ("html", "png", "svg", "json", "csv", "parquet")
PNG_SCALE = 2.0
# Searched one at a time in the lower-cased page: as one case-insensitive alternation, the search
# took 0.4 s on a 100-run comparison page (8 MB of inlined data).
_FETCHED = [re.compile(p) for p in (r"<script[^>]+src\s*=", r"<link[^>]+href\s*=\s*[\"']https?:", r"cdn\.jsdelivr",
                                     r"unpkg\.com", r"cdnjs")]


def check_formats(formats: Sequence[str], where: str = "formats") -> list[str]:
    out = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise QueryError(f"{where}: unsupported output format {fmt!r}; supported: {', '.join(FORMATS)}")
        out.append(fmt)
    return out


def targets(out: str | Path, name: str, formats: Sequence[str]) -> dict[str, Path]:
    """Where each format goes: ``out`` with a format's suffix is that one file; else a folder of all."""
    out = Path(out)
    if out.suffix and not out.is_dir():
        (fmt,) = check_formats([out.suffix], f"output {out}")
        return {fmt: out}
    return {fmt: out / f"{name}.{fmt}" for fmt in check_formats(formats)}


def assert_offline(page: str) -> None:
    """Raise if the page would fetch scripts or styles from the network."""
    lower = page.lower()
    for pattern in _FETCHED:
        match = pattern.search(lower)
        if match:
            raise AssertionError(f"the HTML fetches from the network: {match.group(0)!r}")


@functools.lru_cache(maxsize=1)
def inline_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script, for Altair's Vega-Lite version.

    Bundling runs vl-convert's JavaScript bundler, seconds on every page (as long as drawing a
    100-run comparison), and its output depends only on the installed versions: it is kept under
    ``cache_dir()/vega``, named by them, and written whole or not at all (a rename).
    """
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    version = vl_version_for_vl_convert()
    path = config.cache_dir() / "vega" / f"bundle-vl-convert-{metadata.version('vl-convert-python')}-{version}.js"
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8")
        if "vegaEmbed" in text:
            return text
    text = vl_convert.javascript_bundle(vl_version=version)
    with contextlib.suppress(OSError):  # a read-only home: bundle again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    return text


def page(title: str, blocks: Sequence[str | alt.TopLevelMixin], intro: str = "") -> str:
    """One self-contained HTML page: headings/tables (HTML strings) and charts, in order."""
    parts, scripts = [], []
    for i, block in enumerate(blocks):
        if isinstance(block, str):
            parts.append(block)
        else:
            parts.append(f'<div id="chart{i}" class="chart"></div>')
            scripts.append(f"vegaEmbed('#chart{i}', {json.dumps(render.to_spec(block))}, {{actions: true}}).catch(console.error);")
    body = "\n".join(parts)
    script = "\n".join(scripts)
    text = f"""<!DOCTYPE html>
<html><head><meta charset="UTF-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f3f3f3; }} .chart {{ margin: 12px 0 28px; }} .note {{ color: #555; }}
</style>
<script type="text/javascript">
{inline_bundle()}
</script></head>
<body><h1>{html.escape(title)}</h1>
{intro}
{body}
<script type="text/javascript">
{script}
</script>
</body></html>
"""
    assert_offline(text)
    return text


def write(chart: alt.TopLevelMixin, frame: pd.DataFrame, where: dict[str, Path]) -> list[Path]:
    """Every requested format, each file complete before the next (parents created)."""
    written = []
    for fmt, path in where.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            render.save(chart, path, "html")
            assert_offline(path.read_text())
        elif fmt in ("png", "svg"):  # a picture: without the hover-only layers it cannot show
            render.save(chart, path, fmt, scale=PNG_SCALE)
        elif fmt == "json":  # the whole frame, for a reader who edits the spec
            path.write_text(json.dumps(chart.to_dict(), indent=1))
        elif fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            _parquet_safe(frame).to_parquet(path, index=False)
        written.append(path)
    return written


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding None and strings become plain strings with nulls, which Parquet types."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].astype("string")
    return out
