"""Test setup: offline hub access, deterministic seeds, hypothesis profile."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "apsq", deadline=None, max_examples=60, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("apsq")
# One torch thread per pytest-xdist worker (oversubscribed threads thrash on 2 cores); 2 otherwise.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision, device, process group): a test that builds
    an ``Accelerator`` or a Hugging Face ``Trainer`` must not hand its settings to the next test in the same
    worker (``AcceleratorState has already been initialized and cannot be changed``)."""
    yield
    import sys

    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Commands run in-process (``--threads N`` calls ``torch.set_num_threads``) must not change the
    thread count of the tests that follow in the same worker: float GEMMs sum in a thread-dependent
    order, and module-scoped reference runs are compared bit for bit with later runs."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
