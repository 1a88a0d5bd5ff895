"""The one rule for "is this object already ingested?", which the sensors (asking for runs)
and the runs (choosing what to read) share: they must never disagree, or a sensor would ask
again and again for objects its runs skip."""

from __future__ import annotations

import pytest

from gaming_pipeline.lib.ledger import covers
from gaming_pipeline.lib.s3_events import LandedObject

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("recorded", "etag", "ingested"),
    [
        (None, "e1", False),  # never ingested
        (None, "", False),
        ("e1", "e1", True),  # the version the ledger holds
        ("e1", "e2", False),  # overwritten since: ingest it again
        ("", "e1", False),  # recorded without an ETag, seen with one: it may be another version
        ("e1", "", True),  # seen without an ETag: the version the ledger holds
    ],
)
def test_an_object_is_ingested_when_the_ledger_holds_its_version(recorded, etag, ingested):
    assert covers(recorded, LandedObject("landing", "events/a.ndjson.gz", etag)) is ingested
