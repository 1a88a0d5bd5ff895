"""The ingest service's connection cap follows the open-file limit (app.connection_cap): with
few descriptors, extra connections get 503 instead of the spool failing to open or fsync."""

from __future__ import annotations

import resource

import pytest

from gaming_pipeline.ingest_service import app

pytestmark = pytest.mark.unit


@pytest.fixture
def limits(monkeypatch):
    """A fake RLIMIT_NOFILE: (soft, hard), and what the code set it to."""
    state = {"limit": (100, 100), "set": None}
    monkeypatch.setattr(resource, "getrlimit", lambda which: state["limit"])

    def setrlimit(which, value):
        state["set"] = state["limit"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def test_a_low_descriptor_limit_lowers_the_cap_and_keeps_descriptors_for_the_spool(limits):
    assert app.connection_cap(1000) == 100 - app.RESERVED_DESCRIPTORS
    assert app.connection_cap(10) == 10
    limits["limit"] = (40, 40)
    assert app.connection_cap(1000) == 1
    assert limits["set"] is None


def test_the_soft_limit_is_raised_to_the_hard_one_first(limits):
    limits["limit"] = (1024, 65536)
    assert app.connection_cap(1000) == 1000 and limits["set"] == (65536, 65536)
    limits["limit"] = (1024, resource.RLIM_INFINITY)
    assert app.connection_cap(5000) == 5000
