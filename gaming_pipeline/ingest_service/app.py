"""The ingest service: `POST /v1/events`, `GET /healthz`, `GET /metrics` (README: The ingest service).

A request is checked in this order, each with its own answer: the API key (401), the content
type (415), the size (413), the JSON (400); then each event on its own (202 with a reason for
every event turned away). Accepted events are stamped, their PII is sealed and taken out,
and the request's record is fsynced into the spool before the 202 is sent. When the spool
is full (S3 unreachable for long) the answer is 503 with Retry-After, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import sys
import threading
import time
import zlib
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gaming_pipeline.catalog import CATALOG_REQUIRES, CATALOG_TYPE, UNDECLARED, UNKNOWN_EVENT
from gaming_pipeline.ingest_service.delivery import Delivery, StreamSink
from gaming_pipeline.ingest_service.keys import KeyRing
from gaming_pipeline.ingest_service.schema import (
    ERASED_PLAYER,
    BodyNotJson,
    Sorted,
    encode_lines,
    sort_events,
    split_body,
    window_key,
)
from gaming_pipeline.ingest_service.spool import RecentIds, Record, Spool, SpoolFull
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.pii import KeyService, PiiVault
from gaming_pipeline.lib.pseudonyms import NOBODY_ERASED, ErasedPlayers

log = logging.getLogger("gaming_pipeline.ingest_service")

JSON_TYPES = {"application/json"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson"}
RETRY_AFTER_SECONDS = 5
# A client should not wait on S3 or Kinesis: the service gives up on a call quickly and the spool
# retries the whole segment later.
AWS_CONFIG = Config(connect_timeout=3, read_timeout=20, retries={"max_attempts": 2, "mode": "standard"})


@dataclass(frozen=True)
class ServiceConfig:
    spool_dir: Path
    keys_file: Path
    landing_bucket: str
    pii_bucket: str
    # Where the vault's keys come from (lib/pii.py): KMS, or a local master key.
    pii_keys: KeyService
    # `--sink kinesis`: the Kinesis stream (name or ARN) accepted events go on, instead of
    # landing objects (ingest_service/delivery.StreamSink).
    stream: str = ""
    flush_bytes: int = 5 * 1024 * 1024
    flush_seconds: float = 60.0
    spool_max_bytes: int = 1024**3
    max_body_bytes: int = 4 * 1024 * 1024
    # A body of millions of tiny items is within max_body_bytes, but checking each and
    # answering a reason for each would hold the event loop for seconds.
    max_events_per_request: int = 10_000
    dedup_seconds: float = 600.0
    # Client event_ids are remembered per app for dedup_seconds, or until this many are held
    # (the oldest go first): about 140 bytes an id (its key, schema.window_key, and its place
    # in spool.RecentIds), so at most ~210 MB.
    # Past 2,500 events/s with client ids, the window is shorter than dedup_seconds.
    dedup_max_ids: int = 1_500_000
    shutdown_flush_seconds: float = 30.0
    # What a client that never finishes may hold (answered 408, 431 or 503, as the README's service section says).
    # The request line and headers over this size are answered 431.
    max_header_bytes: int = 16 * 1024
    # From a request's first byte to its last header: later is 408.
    header_timeout_seconds: float = 10.0
    # To read the whole body: later is 408 (4 MiB at 1 Mbit/s takes 34 s).
    body_timeout_seconds: float = 60.0
    # A connection idle that long, new or between requests, is closed.
    keep_alive_seconds: float = 5.0
    # Connections over this are answered 503 at once and closed; fewer still if the file
    # descriptor limit is low (connection_cap), so that the spool never runs out of them.
    max_connections: int = 1000


# Descriptors kept for the spool, S3 connections, logs and the interpreter itself.
RESERVED_DESCRIPTORS = 64


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer if the process may not open that many descriptors beside its own.
    The soft limit is raised to the hard one first, as systemd and shells often set 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


def reason_label(reason: str) -> str:
    """A rejection reason reduced to a few metric labels (the full text goes to the client)."""
    if reason.startswith("not JSON"):
        return "not_json"
    if "missing required field" in reason or reason.endswith(CATALOG_REQUIRES):
        return "missing_field"
    if UNDECLARED in reason:
        return "unknown_field"
    if UNKNOWN_EVENT in reason:
        return "unknown_event"
    if reason.startswith("Expected `") and "got `" in reason or reason.endswith(CATALOG_TYPE):
        return "wrong_type"
    if reason.startswith(("Expected `", "eventParams.client_event_time")) or "out of range" in reason:
        return "out_of_range"
    if reason == ERASED_PLAYER:
        return "erased_player"
    return "purchase_rule"


class Metrics:
    def __init__(self, spool: Spool, keys: KeyRing):
        self.registry = registry = CollectorRegistry()
        self.accepted = Counter(
            "ingest_events_accepted",
            "Events accepted, by where they land",
            ["destination"],
            registry=registry,
        )
        self.rejected = Counter(
            "ingest_events_rejected", "Events turned away, by reason", ["reason"], registry=registry
        )
        self.requests = Counter(
            "ingest_requests", "Requests answered, by status", ["status"], registry=registry
        )
        self.request_seconds = Histogram(
            "ingest_request_seconds", "Time to answer POST /v1/events", registry=registry
        )
        self.flush_seconds = Histogram(
            "ingest_flush_seconds",
            "Time to deliver a spool segment to S3 and the PII vault",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.flush_failures = Counter("ingest_flush_failures", "Failed segment deliveries", registry=registry)
        self.landing_objects = Counter("ingest_landing_objects", "Landing objects written", registry=registry)
        self.stream_records = Counter(
            "ingest_kinesis_records",
            "Records the Kinesis stream acknowledged (--sink kinesis)",
            registry=registry,
        )
        Gauge("ingest_spool_bytes", "Bytes accepted and not yet delivered", registry=registry).set_function(
            lambda: spool.pending_bytes
        )
        Gauge(
            "ingest_spool_segments", "Sealed segments waiting for delivery", registry=registry
        ).set_function(lambda: len(spool.sealed_segments()))
        Gauge("ingest_spool_max_bytes", "Spool size at which requests get 503", registry=registry).set(
            spool.max_bytes
        )
        Gauge(
            "ingest_delivery_failing",
            "1 while the last delivery to S3 failed (the spool retries; the log says why)",
            registry=registry,
        ).set_function(lambda: spool.last_failure is not None)
        Gauge("ingest_api_keys", "API keys the service knows", registry=registry).set_function(
            lambda: len(keys)
        )
        Gauge(
            "ingest_spool_parked_segments",
            "Spool segments set apart as undeliverable (see parked-*.reason in the spool)",
            registry=registry,
        ).set_function(lambda: len(spool.parked_segments()))
        Gauge(
            "ingest_spool_fault",
            "1 while a disk error keeps the spool from taking records (503; the log says why)",
            registry=registry,
        ).set_function(lambda: spool.fault is not None)


def _answer(status: int, payload: dict, headers: dict | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status, headers, media_type="application/json")


def _busy(reason) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return _answer(503, {"error": f"cannot take events right now, retry: {reason}"}, headers)


def _succeeded(write: Future) -> bool:
    return not write.cancelled() and write.exception() is None


def _outcome(write: Future) -> asyncio.Future:
    """Whether a spool write succeeded, awaitable without the power to cancel it."""
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()

    def settle(done: Future) -> None:
        if not outcome.done():
            outcome.set_result(_succeeded(done))

    write.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
    return outcome


class PiiKeysUnavailable(RuntimeError):
    """PII cannot be sealed yet: the client is told to retry (503)."""


class Service:
    """The spool, keys, vault and metrics of one running service."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.keys = KeyRing(config.keys_file)
        s3 = aws.client("s3", AWS_CONFIG)
        self.vault = PiiVault(s3, config.pii_bucket, config.pii_keys)
        self.recent = RecentIds(config.dedup_seconds, config.dedup_max_ids)
        self.spool = Spool(
            config.spool_dir,
            self._deliver,
            config.flush_bytes,
            config.flush_seconds,
            config.spool_max_bytes,
            self.recent,
        )
        sink = (
            StreamSink(aws.client("kinesis", AWS_CONFIG), config.stream, self.spool.progress)
            if config.stream
            else None
        )
        self.delivery = Delivery(s3, config.landing_bucket, self.vault, self.spool.instance, sink)
        self.metrics = Metrics(self.spool, self.keys)
        # The PII keys come from KMS, which a request must never wait on: they are fetched
        # here, in the background, and until they are, requests with PII are answered 503.
        self.pii_keys_ready = threading.Event()
        self._pii_key_attempts = 0
        threading.Thread(target=self._fetch_pii_keys, name="pii-keys", daemon=True).start()

    def _fetch_pii_keys(self) -> None:
        pause = 1.0
        while True:
            try:
                self.vault.pseudonym_key, self.vault.pending_key  # noqa: B018 (fetched and kept)
                self.delivery.erased = self.vault.erased()
            except (BotoCoreError, ClientError) as error:
                log.warning("the PII keys or the erased-players list cannot be had yet: %s", error)
                self._pii_key_attempts += 1
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            self.pii_keys_ready.set()
            return

    def _erased(self) -> ErasedPlayers:
        """The erased-players list as the last delivery read it (a request never waits on
        S3 for it; the delivery checks every event again against the list of its time)."""
        # Before a delivery has read it, nobody: no pseudonym to compute, so no KMS call
        # in the request path.
        return self.delivery.erased or NOBODY_ERASED

    def _deliver(self, segment_id: str, records: list[Record]) -> None:
        started = time.perf_counter()
        try:
            delivered = self.delivery(segment_id, records)
        except Exception:
            self.metrics.flush_failures.inc()
            raise
        seconds = time.perf_counter() - started
        self.metrics.flush_seconds.observe(seconds)
        self.metrics.landing_objects.inc(delivered.objects)
        self.metrics.stream_records.inc(delivered.stream_records)
        log.info(
            "delivered",
            extra={
                "segment": segment_id,
                "objects": delivered.objects,
                "kinesis_records": delivered.stream_records,
                "events": delivered.events,
                "pii_players": delivered.players,
                "events_of_erased_players": delivered.events_of_erased,
                "seconds": round(seconds, 3),
            },
        )

    async def _body(self, request: Request) -> bytes | Response:
        limit = self.config.max_body_bytes
        too_large = _answer(413, {"error": f"the body is over the limit of {limit:,} bytes"})
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large
        body = bytearray()
        seconds = self.config.body_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        return too_large
        except TimeoutError:
            error = {"error": f"the body did not arrive within {seconds:g} s"}
            return _answer(408, error, {"connection": "close"})
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "identity":
            return bytes(body)
        if encoding != "gzip":
            return _answer(415, {"error": f"content encoding {encoding!r} is not gzip or identity"})
        try:
            inflater = zlib.decompressobj(wbits=31)
            inflated = inflater.decompress(bytes(body), limit + 1)
        except zlib.error as error:
            return _answer(400, {"error": f"the body is not valid gzip: {error}"})
        if len(inflated) > limit:
            return too_large
        if not inflater.eof or inflater.unused_data:
            # Cut short, or several gzip members: taking part of it would lose the rest quietly.
            return _answer(400, {"error": "the body is not one whole gzip stream"})
        return inflated

    async def post_events(self, request: Request) -> Response:
        """Every request is answered and counted: a fault of the service's own is a 500,
        logged with its traceback; client input never gets there (it is a 4xx or a reason)."""
        started = time.perf_counter()
        try:
            response, outcome = await self._post_events(request)
        except ClientDisconnect:
            # Nobody reads this answer; it is counted under its own label all the same.
            response, outcome = _answer(499, {"error": "the client went away"}), {}
        except Exception:
            log.exception("request failed")
            response, outcome = _answer(500, {"error": "the service failed, retry"}), {}
        self.metrics.requests.labels(str(response.status_code)).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - started)
        log.info(
            "events",
            extra={
                "status": response.status_code,
                **outcome,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return response

    async def _post_events(self, request: Request) -> tuple[Response, dict]:
        caller = self.keys.caller(request.headers.get("x-api-key"))
        if caller is None:
            return _answer(401, {"error": "missing or unknown API key (header x-api-key)"}), {}
        outcome: dict = {"app": caller.app, "key_id": caller.key_id}
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES | NDJSON_TYPES:
            accepted = ", ".join(sorted(JSON_TYPES | NDJSON_TYPES))
            return _answer(
                415, {"error": f"content type {content_type!r} is not one of: {accepted}"}
            ), outcome
        body = await self._body(request)
        if isinstance(body, Response):
            return body, outcome
        ndjson = content_type in NDJSON_TYPES
        try:
            items = split_body(body, ndjson)
        except BodyNotJson as error:
            return _answer(400, {"error": str(error)}), outcome
        if len(items) > self.config.max_events_per_request:
            limit = self.config.max_events_per_request
            return _answer(413, {"error": f"the body has over {limit:,} events"}), outcome
        now_ms = time.time_ns() // 1_000_000
        result = sort_events(
            items, now_ms, lambda key: self.recent.seen(key, now_ms), caller.app, self._erased().holds
        )
        if ndjson and items and result.not_json == len(items):
            return _answer(400, {"error": "no line of the NDJSON body is JSON"}), outcome
        # Copies of events whose first request is still being written wait for its outcome.
        earlier = [
            _outcome(write)
            for d in result.duplicates
            if (write := self.recent.writing(window_key(caller.app, d["event_id"])))
        ]
        if result.accepted:
            try:
                written = self.spool.submit(self._record(result, now_ms))
            except SpoolFull as error:
                return _busy(error), outcome
            except PiiKeysUnavailable as error:
                return _busy(error), outcome
            # Held before any await, so a copy in a concurrent request is known as one.
            self.recent.hold(result.client_ids, written)
            loop = asyncio.get_running_loop()
            written.add_done_callback(
                lambda write: loop.call_soon_threadsafe(
                    self.recent.settle, result.client_ids, now_ms, _succeeded(write)
                )
            )
            try:
                await asyncio.wrap_future(written)
            except Exception as error:  # the write failed (the disk): nothing was taken
                return _busy(error), outcome
        if not all(await asyncio.gather(*earlier)):
            return _busy("an earlier copy of an event in this request could not be stored"), outcome
        self.metrics.accepted.labels("landing").inc(len(result.events))
        self.metrics.accepted.labels("unknown_game").inc(len(result.parked))
        for rejected in result.rejected:
            self.metrics.rejected.labels(reason_label(rejected["reason"])).inc()
        self.metrics.rejected.labels("duplicate").inc(len(result.duplicates))
        counts = {
            "accepted": result.accepted,
            "rejected": len(result.rejected),
            "duplicates": len(result.duplicates),
            "unknown_game": len(result.parked),
        }
        payload = {**counts, "errors": result.rejected, "duplicate_events": result.duplicates}
        return _answer(202, payload), {**outcome, **counts}

    def _record(self, result: Sorted, now_ms: int) -> Record:
        """What the spool keeps of a request: its landing lines, and its PII sealed."""
        if result.pii and not self.pii_keys_ready.is_set():
            raise PiiKeysUnavailable("the PII keys are not available yet (KMS unreachable)")
        return Record(
            now_ms,
            encode_lines(result.events) if result.events else b"",
            encode_lines(result.parked) if result.parked else b"",
            [
                (player, event_id, self.vault.seal_pending(player, pii))
                for event_id, device_id, pii in result.pii
                for player in (self.vault.player_id(device_id),)
            ],
            result.client_ids,
        )

    async def healthz(self, request: Request) -> Response:
        """200 while the largest request allowed would fit in the spool and PII can be sealed.
        The probe is public: it says only ok, full, disk_error, starting or
        pii_keys_unavailable; the spool's and delivery's details are in /metrics."""
        if not self.spool.can_accept(self.config.max_body_bytes):
            return _answer(503, {"status": "full" if self.spool.fault is None else "disk_error"})
        if not self.pii_keys_ready.is_set():
            # The first attempt still under way: "starting"; past it, KMS cannot be reached.
            return _answer(
                503, {"status": "starting" if self._pii_key_attempts == 0 else "pii_keys_unavailable"}
            )
        return _answer(200, {"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(config: ServiceConfig) -> Starlette:
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        service = holder["service"] = Service(config)
        service.spool.start()
        log.info(
            "started",
            extra={"spool": str(config.spool_dir), "bucket": config.landing_bucket, "stream": config.stream},
        )
        # The app's state, which uvicorn hands its protocols too: they count their refusals.
        yield {"service": service}
        await run_in_threadpool(service.spool.close, config.shutdown_flush_seconds)
        log.info("stopped", extra={"segments_left": len(service.spool.sealed_segments())})

    def route(name: str):
        async def endpoint(request: Request) -> Response:
            return await getattr(holder["service"], name)(request)

        return endpoint

    return Starlette(
        routes=[
            Route("/v1/events", route("post_events"), methods=["POST"]),
            Route("/healthz", route("healthz")),
            Route("/metrics", route("metrics_text")),
        ],
        lifespan=lifespan,
    )


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, message and the record's extra fields.
    Only counts, ids and names are ever passed as extras: never an event or its PII."""

    # uvicorn's color_message repeats its message with terminal colours.
    _left_out = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "asctime",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._left_out})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


HEAD_TOO_LARGE = "the request head is over the size limit"


class HeadTooLarge(Exception):
    """Raised in a parser callback: httptools stops there and raises its own error, with this
    one as that error's context."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks, so that connections that never
    finish cannot hold the service (README: The ingest service):
    - over `max_connections` open, a new one is answered 503 and closed at once (uvicorn's
      limit_concurrency counts only at a request's head, while idle ones hold descriptors);
    - a new connection that sends nothing is closed after the keep-alive timeout, as an idle
      kept-alive one is;
    - a request head (line and headers) must arrive within `header_timeout`: else 408;
    - a head over `max_head_bytes` is 431 (httptools has no size limit of its own);
    - a body still coming after the answer (a 401 or 413 not read) is drained for at most
      `body_timeout`, then the connection is closed.
    The body's own read timeout is the app's (Service._body), which answers 408.
    Each refusal is counted in the service's ingest_requests metric."""

    def __init__(
        self,
        *args,
        max_connections: int,
        max_head_bytes: int,
        header_timeout: float,
        body_timeout: float,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.draining = False
        # True while the next bytes from the client are a request head's, false in a body.
        self.in_head = True
        self.heads_read = 0
        # A head's size is counted two ways, as httptools holds a header back until the next
        # one begins: the bytes of reads made only of the head, while it is incomplete, and
        # the URL and header lines the parser hands over.
        self.head_arrived = 0
        self.head_parsed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.refuse(503, "too many connections, retry", b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS)
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        begins_in_head, heads_before = self.in_head, self.heads_read
        if begins_in_head and self.deadline is None:
            self.deadline = self.loop.call_later(self.header_timeout, self.head_too_slow)
        super().data_received(data)
        # A read that began in a head and completed none is all head (one that ends a body
        # may begin the next head: that read is left to the parser's count).
        if begins_in_head and self.heads_read == heads_before and not self.transport.is_closing():
            self.head_arrived += len(data)
            if self.head_arrived > self.max_head_bytes:
                self.refuse(431, HEAD_TOO_LARGE)

    def on_url(self, url: bytes) -> None:
        self.count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_head(len(name) + len(value) + 4)  # with ": " and the line's end
        super().on_header(name, value)

    def count_head(self, size: int) -> None:
        self.head_parsed += size
        if self.head_parsed > self.max_head_bytes:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self.cancel_deadline()
        self.in_head = False
        self.heads_read += 1
        self.head_arrived = self.head_parsed = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head = True
        if self.draining:
            # The body ended after all: the connection is kept alive as after any request.
            self.cancel_deadline()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.in_head and not self.transport.is_closing():
            self.draining = True
            self.deadline = self.loop.call_later(self.body_timeout, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        super().connection_lost(exc)

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline, self.draining = None, False

    def head_too_slow(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.refuse(408, f"the request head did not arrive within {self.header_timeout:g} s")

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this in its `except httptools.HttpParserError`: a head over the size
        # limit is told from a malformed one by the error's context (count_head).
        if isinstance(sys.exception().__context__, HeadTooLarge):
            self.refuse(431, HEAD_TOO_LARGE)
        else:
            self.refuse(400, msg)

    def refuse(self, status: int, message: str, headers: bytes = b"") -> None:
        """Answer `status` with a short text and close the connection; only close it while the
        answer to an earlier request is still to come."""
        self.cancel_deadline()
        service = self.app_state.get("service")
        if service is not None:
            service.metrics.requests.labels(str(status)).inc()
        if self.cycle is None or self.cycle.response_complete:
            text = message.encode()
            head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n%scontent-length: %d\r\n\r\n"
            self.transport.write(STATUS_LINE[status] + head % (headers, len(text)) + text)
        self.transport.close()


def serve(config: ServiceConfig, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    protocol = functools.partial(
        GuardedHttpToolsProtocol,
        max_connections=connection_cap(config.max_connections),
        max_head_bytes=config.max_header_bytes,
        header_timeout=config.header_timeout_seconds,
        body_timeout=config.body_timeout_seconds,
    )
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        http=protocol,  # type: ignore[arg-type]  (a protocol factory: uvicorn only calls it)
        # No WebSocket route: an upgrade would hand the connection to a protocol without the
        # limits above, so it is ignored and the request served as HTTP.
        ws="none",
        timeout_keep_alive=config.keep_alive_seconds,  # type: ignore[arg-type]  (a float works)
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(config.shutdown_flush_seconds),
    )
