"""The ingest service out of file descriptors (issue 16): idle connections use up a low
limit while a segment is due for sealing, then go away. Every event the service answered 202
lands exactly once; what it could not store it answered 503."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from collections import Counter

import msgspec
import pytest

from gaming_pipeline.local import generator
from gaming_pipeline_tests.service_helpers import IngestService, landed, wait_until

pytestmark = pytest.mark.e2e

HEADROOM = 40  # descriptors above what the idle service holds


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_running_out_of_descriptors_never_loses_an_acknowledged_event(local_aws, landing, tmp_path):
    service = IngestService(tmp_path / "home", landing.bucket, options=["--flush-seconds", "0.3"]).start()
    _, key = service.new_key()
    sender = service.sender(key)
    factory = generator.EventFactory(3)
    acknowledged: list[str] = []

    def post() -> int | None:
        """One attempt; None when the service could not even answer (no descriptor to accept)."""
        events = [generator.client_event(factory.event(time.time())) for _ in range(5)]
        body = b"\n".join(msgspec.json.encode(e) for e in events)
        try:
            status, _ = sender.post(body, "application/x-ndjson")
        except (OSError, http.client.HTTPException):
            return None
        if status == 202:
            acknowledged.extend(e["event_id"] for e in events)
        else:
            assert status == 503, status
        return status

    try:
        assert post() == 202  # a segment is open
        in_use = len(os.listdir(f"/proc/{service.process.pid}/fd"))
        subprocess.run(
            ["prlimit", f"--pid={service.process.pid}", f"--nofile={in_use + HEADROOM}"], check=True
        )
        idle = []
        for _ in range(HEADROOM + 20):
            idle.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        time.sleep(1)  # the open segment comes due while no descriptor is left
        for connection in idle:
            connection.close()
        sender.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            post()
            time.sleep(0.02)
        assert acknowledged, "the service never took events again"
        service.stop()
        wait_until(
            lambda: sum(len(events) for events in landed(landing.bucket).values()) >= len(acknowledged),
            20,
            "the acknowledged events to land",
        )
    finally:
        if service.process.poll() is None:
            service.kill()
    landed_ids = Counter(e["event_id"] for events in landed(landing.bucket).values() for e in events)
    assert not [i for i in acknowledged if landed_ids[i] != 1], "acknowledged events lost or doubled"
