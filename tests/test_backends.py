"""Backend detection, tested by simulating torch's flags; a real CUDA pass when a GPU is there."""

import pytest
import torch

from ldreg.backends import resolve_backend
from ldreg.errors import BackendUnavailable
from ldreg.registry import load_plugins


@pytest.fixture
def backends():
    return load_plugins().backends


def test_cpu_always_available_and_auto_falls_back_to_it(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert backends.get("cpu").is_available()
    assert resolve_backend("auto", backends).name == "cpu"


def test_cuda_detected_from_flags(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = backends.get("cuda")
    assert cuda.availability() == (True, "")
    assert cuda.preferred_dtype() == torch.bfloat16
    assert not backends.get("rocm").is_available()
    assert resolve_backend("auto", backends).name == "cuda"


def test_rocm_detected_from_hip_flag(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backends.get("rocm").is_available()
    ok, why = backends.get("cuda").availability()
    assert not ok and "torch.version.cuda is None" in why
    assert resolve_backend("auto", backends).name == "rocm"


def test_cuda_build_without_device_says_so(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = backends.get("cuda").availability()
    assert not ok and "sees no device" in why


def test_mps_detected_from_flags(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert backends.get("mps").is_available()
    assert resolve_backend("auto", backends).name == "mps"


def test_asking_for_unavailable_backend_lists_available(backends, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailable, match=r"backend 'cuda' is not available: .*available here: cpu"):
        resolve_backend("cuda", backends)


def test_cpu_seed_is_deterministic(backends):
    cpu = backends.get("cpu")
    cpu.seed(7)
    a = torch.rand(3)
    cpu.seed(7)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.gpu
def test_real_cuda_forward_backward(backends):
    cuda = resolve_backend("cuda", backends)
    model = torch.nn.Linear(16, 4).to(cuda.device())
    with cuda.autocast(cuda.preferred_dtype()):
        loss = model(torch.randn(8, 16, device=cuda.device())).float().pow(2).mean()
    loss.backward()
    cuda.synchronize()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    assert cuda.memory_stats()["allocated_bytes"] > 0


def test_cpu_threads_half_the_cores_for_small_models_all_for_large(monkeypatch):
    from ldreg_plugins.backends.cpu import ENV_THREADS, LARGE_MODEL, default_threads

    monkeypatch.delenv(ENV_THREADS, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_threads() == 1 and default_threads(LARGE_MODEL - 1) == 1
    assert default_threads(LARGE_MODEL) == 2
    monkeypatch.setenv(ENV_THREADS, "1")
    assert default_threads(LARGE_MODEL) == 1  # the user's setting wins
