"""A small client of the ingest service, as a game's backend or SDK would use it: events go
in batches, and a batch the service did not answer (a 5xx, a dropped connection, a restart)
is sent again as it was. Events carry their own `event_id`, so a batch the service took
before the connection dropped is not taken twice."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import msgspec

# A 5xx is the service's fault or a passing state (busy, restarting): the batch is sent again
# as it was; its event_ids keep a batch the service did take from being taken twice.
RETRY_STATUSES = {500, 502, 503, 504}


class EventsRefused(RuntimeError):
    """The service refused a request in a way sending it again cannot fix (400, 401, 413...)."""


class EventSender:
    def __init__(self, url: str, api_key: str, timeout: float = 30, give_up_after: float = 300):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the ingest service URL must be http(s)://host[:port], not {url!r}")
        self.parts = parts
        self.api_key = api_key
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.retries = 0
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self.parts.hostname, self.parts.port, timeout=self.timeout)
        return self._connection

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        """One attempt: (status, answer)."""
        connection = self._connect()
        try:
            connection.request(
                "POST",
                "/v1/events",
                body=body,
                headers={"x-api-key": self.api_key, "content-type": content_type},
            )
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return response.status, msgspec.json.decode(answer) if answer else {}

    def send(self, events: list[dict]) -> dict:
        """Post a batch until the service answers it; the service's answer (202)."""
        body = msgspec.json.encode(events)
        deadline = time.monotonic() + self.give_up_after
        pause = 0.2
        while True:
            try:
                status, answer = self.post(body)
                if status == 202:
                    return answer
                if status not in RETRY_STATUSES:
                    raise EventsRefused(
                        f"the ingest service answered {status}: {answer.get('error', answer)}"
                    )
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ingest service took no events for {self.give_up_after:.0f} s")
            self.retries += 1
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def send_in_batches(
    events: Iterable[dict],
    sender: EventSender,
    batch_events: int = 500,
    max_wait_seconds: float = 1.0,
    on_batch: Callable[[list[dict], dict], None] = lambda batch, answer: None,
) -> None:
    """Send events as they come, a batch at `batch_events` or `max_wait_seconds` old."""
    batch: list[dict] = []
    opened = time.monotonic()
    for event in events:
        if not batch:
            opened = time.monotonic()
        batch.append(event)
        if len(batch) >= batch_events or time.monotonic() - opened >= max_wait_seconds:
            on_batch(batch, sender.send(batch))
            batch = []
    if batch:
        on_batch(batch, sender.send(batch))
