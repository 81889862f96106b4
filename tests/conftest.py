"""Shared fixtures: offline HF settings, a private LDREG_HOME, a tiny model, the real database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("LDREG_CPU_THREADS", "1")

# The real MongoDB-protocol server fixtures (`mongo_url`, ...) live in db_fixtures.py.
pytest_plugins = ["db_fixtures"]

REPO = Path(__file__).resolve().parents[1]
# The authors' probing files ship in the package (ldreg/data/resources/authors-probes).
AUTHORS_PROBES = REPO / "ldreg" / "data" / "resources" / "authors-probes" / "helpful-base"


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use small tensors, where a second OpenMP thread only adds contention on 2 cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _ldreg_home(tmp_path_factory):
    """Every test session keeps its state in a temp LDREG_HOME, never in the checkout."""
    home = tmp_path_factory.mktemp("ldreg-home")
    os.environ["LDREG_HOME"] = str(home)
    yield home


@pytest.fixture(scope="session")
def authors_records() -> list[dict]:
    """The authors' 500 training probe records (real HH text with real GPT-3.5 rephrases)."""
    with open(AUTHORS_PROBES / "formal_prob_train.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def english_texts(authors_records) -> list[str]:
    return [r["prompt"] + r["chosen"] for r in authors_records] + [r["rejected"] for r in authors_records]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, english_texts) -> Path:
    """A GPT-NeoX (d=64, 2 layers) and a 512-token BPE, saved for `from_pretrained`."""
    from ldreg.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-neox"), english_texts[:400], vocab_size=512)
