"""The ingest service against clients that send what they should not: malformed, hostile or
endless input gets a 4xx (or 503 while it cannot take more), never any other 5xx, and every
answer is counted (CONTRACT.md section 2)."""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from gaming_pipeline.ingest_service.client import EventSender
from gaming_pipeline_tests.service_helpers import IngestService, event

pytestmark = pytest.mark.e2e

FUZZ_SEED = 16


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def with_raw(field: str, raw: bytes, params: bool = True) -> bytes:
    """A valid event whose `field` (in eventParams, or at the top) holds `raw` as written."""
    valid = event(1, eventName="purchaseEvent", params={"amount": 1.5})
    holder = valid["eventParams"] if params else valid
    holder[field] = "__RAW__"
    return msgspec.json.encode(valid).replace(b'"__RAW__"', raw)


def hostile_bodies(rng: random.Random) -> list[tuple[bytes, str, dict]]:
    """(body, content type, extra headers): each a way a client gets input wrong."""
    good = msgspec.json.encode(event(1))
    weird_values = [
        nested(1_000),
        nested(100_000),
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'"\xff"',
        b'"ok\xc3"',
        b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8: not UTF-8
        b'"\\ud800"',
        b'"\\udfff"',
        b'"\\ud800\\u0041"',
        b'"a\\u0000b"',
        b"1e400",
        b"-1e400",
        b"1" * 5_000,
        b"-" + b"9" * 400,
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"null",
        b"true",
        b"[]",
        b"{}",
        b'{"\xff":1}',
        b'"' + b"x" * 100_000 + b'"',
    ]
    fields = ["amount", "scoreAdjustment", "client_event_time", "device_id", "game_keyword"]
    bodies: list[bytes] = []
    for value in weird_values:
        bodies.append(with_raw(rng.choice(fields), value))
        bodies.append(with_raw("eventTime", value, params=False))
        bodies.append(with_raw("pii", b'{"email":' + value + b"}", params=False))
        bodies.append(value)
    bodies += [
        b"",
        b"\xef\xbb\xbf" + good,
        b'{"\xff\xfe": 1}',
        good.replace(b'"levelUp"', b'"level\xffUp"'),
        good.replace(b'"eventParams"', b'"event\x80Params"'),
    ]
    # Good events cut short, with bytes flipped or random bytes put in.
    for _ in range(60):
        mutated = bytearray(msgspec.json.encode([event(2), event(3)]))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mutated))
            choice = rng.random()
            if choice < 0.4:
                mutated[at] = rng.randrange(256)
            elif choice < 0.7:
                mutated[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                del mutated[at:]
                break
        bodies.append(bytes(mutated))
    bodies += [rng.randbytes(rng.randint(1, 3_000)) for _ in range(40)]

    requests = [(body, "application/json", {}) for body in bodies]
    requests += [(b"\n".join([good, body, good]), "application/x-ndjson", {}) for body in bodies[:80]]
    gzip_header = {"content-encoding": "gzip"}
    requests += [(gzip.compress(body), "application/json", gzip_header) for body in bodies[:40]]
    requests += [
        (gzip.compress(nested(1_000_000)), "application/json", gzip_header),
        (gzip.compress(b"[" + b"0," * 2_000_000 + b"0]"), "application/json", gzip_header),
        (gzip.compress(good) * 3, "application/json", gzip_header),
        (b"not gzip at all", "application/json", gzip_header),
        (rng.randbytes(500), "application/json", gzip_header),
        (good, "application/json; charset=latin-1", {}),
        (good, "application/json", {"content-encoding": "gzip, gzip"}),
    ]
    return requests


def test_no_client_input_gets_a_5xx_and_every_request_is_counted(service):
    _, key = service.new_key()
    requests = hostile_bodies(random.Random(FUZZ_SEED))
    statuses = {}
    for body, content_type, headers in requests:
        status, _ = service.post(body, key, content_type, **headers)
        statuses.setdefault(status, []).append(body[:80])
    server_faults = {status: bodies for status, bodies in statuses.items() if status >= 500}
    assert server_faults == {}
    assert service.metric("ingest_requests_total") == len(requests)
    assert service.process.poll() is None


def test_the_body_nested_beyond_reason_or_not_utf8_is_a_400_and_an_event_a_rejection(service):
    _, key = service.new_key()
    status, answer = service.post(nested(1_000), key)
    assert status == 400 and "nested" in answer["error"]
    lines = [
        msgspec.json.encode(event(1)),
        with_raw("eventTime", nested(1_000), params=False),
        with_raw("device_id", b'"\xff"'),
    ]
    ndjson = b"\n".join(lines)
    status, answer = service.post(ndjson, key, "application/x-ndjson")
    assert status == 202 and answer["accepted"] == 1
    reasons = [error["reason"] for error in answer["errors"]]
    assert "nested" in reasons[0] and "not UTF-8" in reasons[1]
    # In an array too, the good event beside the bad one is taken.
    array = b"[" + msgspec.json.encode(event(2)) + b"," + with_raw("app_name", b'"\xff"') + b"]"
    status, answer = service.post(array, key)
    assert (status, answer["accepted"], answer["rejected"]) == (202, 1, 1)
    assert service.metric("ingest_requests_total") == 3
    assert service.metric('ingest_events_rejected_total{reason="not_json"}') == 3


def test_events_that_would_break_a_kpi_or_land_in_quarantine_are_turned_away(service):
    _, key = service.new_key()
    batch = [
        event(1, eventName="purchaseEvent", params={"amount": 1e17}),
        event(2, params={"client_event_time": "2026-99-99T99:99:99Z"}),
        event(3, params={"client_event_time": "1970-01-01T00:00:00Z"}),
        event(4, eventName="purchaseEvent", params={"amount": 999_999.99}),
    ]
    status, answer = service.post(msgspec.json.encode(batch), key)
    assert (status, answer["accepted"], answer["rejected"]) == (202, 1, 3)
    reasons = [error["reason"] for error in answer["errors"]]
    assert "<= 1000000.0" in reasons[0] and "amount" in reasons[0]
    assert "not a calendar time" in reasons[1] and "outside 2000-2099" in reasons[2]
    assert service.metric('ingest_events_rejected_total{reason="out_of_range"}') == 3


class FailingOnce(BaseHTTPRequestHandler):
    """Answers the first POST with a 500 (a fault of the service), the next with a 202."""

    statuses = [500, 202]
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 (the standard library's name)
        self.bodies.append(self.rfile.read(int(self.headers["content-length"])))
        status = self.statuses[min(len(self.bodies), len(self.statuses)) - 1]
        answer = json.dumps({"accepted": 1} if status == 202 else {"error": "boom"}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_the_client_sends_a_batch_again_after_a_500():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = EventSender(f"http://127.0.0.1:{server.server_port}", "gpk_x", give_up_after=10)
        assert sender.send([event(1)]) == {"accepted": 1}
        assert sender.retries == 1 and FailingOnce.bodies[0] == FailingOnce.bodies[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_tells_a_stranger_only_its_status_and_metrics_the_details(service):
    status, body = service.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert service.metric("ingest_delivery_failing") == 0
    assert service.metric("ingest_spool_max_bytes") == 1024**3
    assert service.metric("ingest_api_keys") == 0


# Short limits, so that the tests wait seconds, not the defaults' minutes.
LIMITS = {"header": 2.0, "body": 2.0, "keep_alive": 1.0, "connections": 40}
LIMIT_OPTIONS = [
    "--header-timeout",
    str(LIMITS["header"]),
    "--body-timeout",
    str(LIMITS["body"]),
    "--keep-alive",
    str(LIMITS["keep_alive"]),
    "--max-connections",
    str(LIMITS["connections"]),
]


@pytest.fixture
def guarded(local_aws, landing, tmp_path):
    running = IngestService(
        tmp_path / "home", landing.bucket, options=["--flush-seconds", "1", *LIMIT_OPTIONS]
    )
    running.start()
    yield running
    if running.process.poll() is None:
        running.stop()


def connect(service: IngestService, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=timeout)


def answer_of(connection: socket.socket, since: float | None = None) -> tuple[bytes, float]:
    """All the server sends until it closes the connection, and how long that took from
    `since` (default now): taken before what starts the server's timer (the connection, the
    head sent), a limit's time is never seen shorter than the server counts it."""
    started = time.monotonic() if since is None else since
    answer = b""
    with connection:
        while chunk := connection.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def head(key: str, length: int, **headers: str) -> bytes:
    lines = [
        "POST /v1/events HTTP/1.1",
        "host: 127.0.0.1",
        f"x-api-key: {key}",
        "content-type: application/json",
        f"content-length: {length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_request_head_too_slow_is_408(guarded):
    opened = time.monotonic()
    connection = connect(guarded)
    connection.sendall(b"POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    answer, seconds = answer_of(connection, since=opened)
    assert answer.startswith(b"HTTP/1.1 408 ") and LIMITS["header"] <= seconds < LIMITS["header"] + 2
    assert guarded.metric('ingest_requests_total{status="408"}') == 1


def test_a_body_too_slow_is_408_and_closed(guarded):
    _, key = guarded.new_key()
    connection = connect(guarded)
    sent = time.monotonic()
    connection.sendall(head(key, 1000) + b'[{"eventName"')
    answer, seconds = answer_of(connection, since=sent)
    assert answer.startswith(b"HTTP/1.1 408 ") and LIMITS["body"] <= seconds < LIMITS["body"] + 2
    assert b"did not arrive" in answer
    assert guarded.metric('ingest_requests_total{status="408"}') == 1


def test_a_body_trickling_on_after_the_answer_is_cut_off(guarded):
    # No key: answered 401 at once; the body it declared comes a byte at a time, for ever.
    connection = connect(guarded)
    connection.sendall(head("gpk_not-a-key", 10_000_000))
    started = time.monotonic()
    with contextlib.suppress(OSError):
        while time.monotonic() - started < 3 * LIMITS["body"]:
            connection.sendall(b" ")
            time.sleep(0.2)
    seconds = time.monotonic() - started
    assert answer_of(connection)[0].startswith(b"HTTP/1.1 401 ")
    assert seconds < LIMITS["body"] + 1


def test_an_idle_connection_is_closed(guarded):
    answer, seconds = answer_of(connect(guarded))
    assert answer == b"" and seconds < LIMITS["keep_alive"] + 2


def test_a_head_over_the_size_limit_is_431_whole_or_in_pieces(guarded):
    _, key = guarded.new_key()
    oversized = head(key, 2, padding="x" * 64 * 1024) + b"[]"
    for piece in (len(oversized), 4096):
        connection = connect(guarded)
        with contextlib.suppress(OSError):  # the server may close while this is still sending
            for at in range(0, len(oversized), piece):
                connection.sendall(oversized[at : at + piece])
                time.sleep(0.01)
        answer, seconds = answer_of(connection)
        assert answer.startswith(b"HTTP/1.1 431 ") and seconds < 2
    # A malformed head is still a 400.
    connection = connect(guarded)
    connection.sendall(b"POST /v1/events HTTP/1.1\r\nno colon here\r\n\r\n")
    assert answer_of(connection)[0].startswith(b"HTTP/1.1 400 ")
    assert guarded.metric('ingest_requests_total{status="431"}') == 2


def test_connections_over_the_cap_get_503_and_a_client_is_served_beside_slow_ones(guarded):
    _, key = guarded.new_key()
    slow = [connect(guarded) for _ in range(30)]
    for connection in slow:
        connection.sendall(b"POST /v1/events HTTP/1.1\r\n")
    started = time.monotonic()
    status, answer = guarded.post(msgspec.json.encode(event(1)), key)
    assert (status, answer["accepted"]) == (202, 1) and time.monotonic() - started < 1
    more = [connect(guarded) for _ in range(LIMITS["connections"] + 5 - len(slow))]
    refused = [answer_of(connection) for connection in more[-5:]]
    assert all(answer.startswith(b"HTTP/1.1 503 ") and seconds < 1 for answer, seconds in refused)
    # The slow ones end with their 408 within the head timeout; then a client is served again.
    assert all(answer_of(connection)[0].startswith(b"HTTP/1.1 408 ") for connection in slow)
    for connection in more[:-5]:
        connection.close()
    assert guarded.post(msgspec.json.encode(event(2)), key)[0] == 202


def test_requests_sent_together_with_bodies_over_the_head_limit_are_all_served(guarded):
    # The head's size is counted only in what belongs to a head: two requests in one write,
    # each body larger than the head limit, are both taken.
    _, key = guarded.new_key()
    bodies = [msgspec.json.encode([event(batch * 1000 + n) for n in range(150)]) for batch in (1, 2)]
    assert all(len(body) > 16 * 1024 for body in bodies)
    together = (
        head(key, len(bodies[0])) + bodies[0] + head(key, len(bodies[1]), connection="close") + bodies[1]
    )
    connection = connect(guarded)
    connection.sendall(together)
    answer, _ = answer_of(connection)
    assert answer.count(b"HTTP/1.1 202 ") == 2 and b'"accepted":150' in answer


def test_a_body_that_ends_after_the_answer_leaves_the_connection_in_use(guarded):
    _, key = guarded.new_key()
    body = msgspec.json.encode([event(1)])
    connection = connect(guarded)
    connection.sendall(head("gpk_not-a-key", len(body)))
    refused = b""
    while not refused.endswith(b"}"):  # the whole 401, its JSON last
        refused += connection.recv(65536)
    assert refused.startswith(b"HTTP/1.1 401 ")
    connection.sendall(body + head(key, len(body), connection="close") + body)
    answer, _ = answer_of(connection)
    assert answer.startswith(b"HTTP/1.1 202 ") and b'"accepted":1' in answer


def test_a_request_asking_to_upgrade_to_a_websocket_is_answered_as_http(guarded):
    # The service has no WebSocket route: a connection handed to a WebSocket protocol would
    # leave these limits behind, so an upgrade asked for is ignored and the request answered
    # as any other (here a GET where only POST is served).
    connection = connect(guarded)
    connection.sendall(
        b"GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    connection.settimeout(5)
    received = b""
    with contextlib.suppress(TimeoutError):
        while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
            received += chunk
    connection.close()
    assert received.startswith(b"HTTP/1.1 405 "), received[:200]
