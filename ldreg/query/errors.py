"""The one error the query layer raises: what was asked, why it cannot be answered, what to try."""

from __future__ import annotations

from ldreg.errors import SpecError


class QueryError(SpecError):
    """A query selects nothing, asks for what no run recorded, or names an unsupported output.

    A SpecError, so the CLI reports it as one line like any other spec mistake.
    """
