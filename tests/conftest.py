from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("fast", max_examples=50, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_captures"


def shared_dir() -> Path | None:
    """../shared beside the checkout (CI puts it there), or $ALB_PCAP_SHARED."""
    for candidate in (os.environ.get("ALB_PCAP_SHARED"), REPO.parent / "shared"):
        if candidate and Path(candidate, "peer").is_dir():
            return Path(candidate)
    return None


# The capture stage has two implementations of its per-packet loop: C (alb_pcap.wire._fastwire,
# when built) and Python. These modules run once with each; tests/test_fastwire.py compares them.
WIRE_MODULES = {"tests.test_capture", "tests.test_pipeline", "tests.test_peer_zeek"}


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__ in WIRE_MODULES and "wire_core" in metafunc.fixturenames:
        metafunc.parametrize("wire_core", ["compiled", "pure"], indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def wire_core(request):
    """ "pure": the capture stage without its C loop (as with ALB_PCAP_PURE=1)."""
    from alb_pcap.wire import capture

    saved = capture._fastwire
    if getattr(request, "param", "compiled") == "pure":
        capture._fastwire = None
    try:
        yield getattr(request, "param", "compiled")
    finally:
        capture._fastwire = saved
