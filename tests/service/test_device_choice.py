"""Which device `charlm serve` picks, and that a fall-back to the CPU is said plainly: the CUDA image
on a host that grants it no GPU must not look like it serves on one."""

from __future__ import annotations

import logging

import pytest
import torch

from service.control.registry import NoModelsError, resolve_device

REGISTRY_LOGGER = "service.control.registry"
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")


@needs_no_gpu
def test_auto_without_a_gpu_serves_on_the_cpu_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOGGER):
        assert resolve_device("auto") == torch.device("cpu")
    [record] = [r for r in caplog.records if r.name == REGISTRY_LOGGER]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (f"no GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda}): "
                                   "serving on the CPU")


def test_an_explicit_cpu_is_no_fall_back_and_logs_nothing(caplog):
    with caplog.at_level(logging.DEBUG, logger=REGISTRY_LOGGER):
        assert resolve_device("cpu") == torch.device("cpu")
    assert not [r for r in caplog.records if r.name == REGISTRY_LOGGER]


@needs_no_gpu
def test_cuda_without_a_gpu_refuses_to_serve():
    with pytest.raises(NoModelsError, match="CHARLM_DEVICE is cuda but CUDA is not available"):
        resolve_device("cuda")
