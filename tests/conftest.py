"""Shared fixtures: small real data when ../shared/data is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018-fluo-train"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def dsb_dir() -> Path:
    """The DSB2018 fluorescence folder beside the repo; skips the test when it is absent."""
    if not (DSB / "images").is_dir():
        pytest.skip("../shared/data/dsb2018-fluo-train is not present")
    return DSB
