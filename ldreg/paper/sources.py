"""The paper app's inputs as source schemes (ldreg.sources), registered through the plugin hook.

``pretrained:NAME`` is a base model pretrained here on Debian's fortunes (ldreg.paper.pretrain),
``generated:NAME`` a preference set built from real text (ldreg.paper.fortune_prefs). Registering
them as a plugin (entry point ``ldreg.paper``) keeps the core free of imports of this app; the
heavy modules load only when a spec names one of them.
"""

from __future__ import annotations

from ldreg.hookspecs import hookimpl
from ldreg.sources import SourceScheme


def _pretrained(name: str) -> str:
    from ldreg.paper.pretrain import pretrained_path

    return str(pretrained_path(name))


def _check_pretrained(field: str, name: str) -> str:
    from ldreg.errors import SpecError
    from ldreg.paper.pretrain import RECORD_FILE, preset, pretrained_dir

    try:
        preset(name)
    except SpecError as exc:  # its message names model.base; this may be a stage's reference
        raise SpecError(f"{field}: {str(exc).split(': ', 1)[1]}") from None
    cached = (pretrained_dir(name) / RECORD_FILE).exists()
    return (f"{field}: pretrained:{name} "
            f"({'cached' if cached else f'not cached: pretrained first, or `ldreg pretrain {name}`'})")


def _generated(name: str) -> str:
    from ldreg.paper.fortune_prefs import dataset_path

    return str(dataset_path(name))


def _check_generated(field: str, name: str) -> str:
    from ldreg.paper.fortune_prefs import recipe

    recipe(name)  # a known name, or a SpecError naming data.source and listing the known ones
    return f"{field}: generated:{name} (built from Debian's fortunes at run start if not cached)"


@hookimpl
def ldreg_register_sources(registry):
    registry.add(SourceScheme("pretrained", "model", _pretrained, _check_pretrained,
                              "a GPT-NeoX base model pretrained here on Debian's fortunes (`ldreg pretrain NAME`)"))
    registry.add(SourceScheme("generated", "data", _generated, _check_generated,
                              "a preference set built from real text (Debian's fortunes)"))
