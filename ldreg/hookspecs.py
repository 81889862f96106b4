"""The plugin contract: every hook a plugin may implement.

Each ``ldreg_register_*`` hook receives a typed registry and calls its ``add`` method
(tox 4 style), so a malformed registration fails at once with an error naming the plugin.
Built-in plugins implement these hooks exactly as third-party ones do, through the
``ldreg`` entry-point group. Every hook is documented in docs/plugin-hooks.md.
"""


from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ldreg.registry import BackendRegistry, LossRegistry, ResponseRegistry

PROJECT = "ldreg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ldreg_register_losses(registry: "LossRegistry") -> None:
    """Register finetuning losses with ``registry.add(LossDefinition(...))``."""


@hookspec
def ldreg_register_responses(registry: "ResponseRegistry") -> None:
    """Register response-type generators with ``registry.add(generator)``."""


@hookspec
def ldreg_register_backends(registry: "BackendRegistry") -> None:
    """Register hardware backends with ``registry.add(backend)``."""
