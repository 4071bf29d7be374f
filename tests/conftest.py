from __future__ import annotations

import os
from pathlib import Path

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
