"""Errors a user can act on: each carries one line saying what is wrong and what to do."""


class LdregError(Exception):
    """Base of every error ldreg reports to a person as one clear line, not a traceback."""


class PluginError(LdregError):
    """A plugin is malformed, clashes with another, or was asked for and is not installed."""


class SpecError(LdregError):
    """An experiment or query spec is wrong; the message names the field and the fix."""


class BackendUnavailable(LdregError):
    """The requested hardware backend cannot run on this machine."""


class DatabaseError(LdregError):
    """The MongoDB server cannot be started, reached or used."""


PREVIEW_CHARS = 60


def preview(value: object, limit: int = PREVIEW_CHARS, quote: bool = True) -> str:
    """``repr(value)`` (or ``str`` when ``quote`` is false) cut to ``limit`` characters.

    Every message that echoes a user's value goes through here, so a 5 MB value gives a short
    line, and a self-referencing or huge structure is never expanded in full.
    """
    text = _bounded_repr(value, limit * 4) if quote else str(value)[: limit * 4]
    text = text.replace("\n", "\\n")
    if len(text) <= limit:
        return text
    size = _size_hint(value)
    return f"{text[: limit - 1]}…{size}"


def _bounded_repr(value: object, limit: int) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 8
    r.maxlevel = 3
    return r.repr(value)


def _size_hint(value: object) -> str:
    if isinstance(value, (str, bytes)):
        return f" ({len(value):,} characters)"
    if isinstance(value, (list, dict, tuple)):
        return f" ({len(value):,} items)"
    return ""


def closest(name: str, options) -> str:
    """' (did you mean X?)' when one option is close to ``name``, else '' (long names are not matched)."""
    import difflib

    if not isinstance(name, str) or len(name) > 100:
        return ""
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
