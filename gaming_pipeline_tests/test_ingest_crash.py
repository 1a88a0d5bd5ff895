"""kill -9 in the middle of a stream: every event the service acknowledged reaches the
landing bucket exactly once, and the client's retries of what it was not told are not
taken twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

from gaming_pipeline.local import generator
from gaming_pipeline_tests.service_helpers import IngestService, landed, wait_until


def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(local_aws, landing, tmp_path):
    service = IngestService(tmp_path / "home", landing.bucket, options=["--flush-seconds", "0.3"]).start()
    _, key = service.new_key()
    acknowledged: list[str] = []
    streaming = threading.Event()
    streaming.set()
    failures: list[BaseException] = []
    sender = service.sender(key)

    def client() -> None:
        factory = generator.EventFactory(5)
        try:
            while streaming.is_set():
                batch = [generator.client_event(factory.event(time.time())) for _ in range(40)]
                # send() repeats a batch until it is answered, through the crash and restart.
                sender.send(batch)
                acknowledged.extend(event["event_id"] for event in batch)
        except BaseException as error:  # surfaced by the assertion below
            failures.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    wait_until(lambda: len(acknowledged) >= 3000, 60, what="3,000 acknowledged events")
    service.kill()
    at_kill = len(acknowledged)
    time.sleep(1)
    service.start(same_port=True)
    wait_until(lambda: len(acknowledged) >= at_kill + 3000, 60, what="3,000 more after the restart")
    streaming.clear()
    thread.join(60)
    assert not failures
    # The client met the outage: a batch of its was cut off and sent again.
    assert sender.retries > 0
    service.stop()

    counts = Counter(e["event_id"] for events in landed(landing.bucket).values() for e in events)
    assert len(acknowledged) == len(set(acknowledged)) >= 6000
    assert set(counts) == set(acknowledged)
    assert max(counts.values()) == 1
