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
