"""How many events per second the ingest service takes, and how fast it answers, on this
machine: one service process (one uvicorn worker) against the local S3 endpoint, loaded by
client threads in this process over keep-alive connections.

    .venv/bin/python bench/ingest_service.py [--seconds 15] [--clients 4] [--out FILE]

Scenarios: batches of 500 generated events with PII on session starts (as the demo's
clients send them), the same without PII, and one event per request. Every event carries
its own event_id, as a real client's would, so the duplicate window does its work too.
The service flushes every second (size 5 MiB), so delivery to S3 and the PII vault runs
during the measurement. After each load the time for the spool to drain is measured, and the
S3 PUTs its delivery made, per 1,000 events: the landing bucket and the vault keep versions
(switched on here, before the service starts), so every PUT that stored an object is one
version, whichever code the service runs (point PYTHONPATH at another tree to measure it).
Writes bench/results/ingest-service-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import msgspec
import recording

from gaming_pipeline.ingest_service import keys
from gaming_pipeline.ingest_service.client import EventSender
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.local import generator, ports, processes


def bodies(batch: int, count: int, with_pii: bool, seed: int) -> list[tuple[bytes, int]]:
    """`count` request bodies of `batch` events each, every event_id new, and how many of
    each body's events carry PII."""
    factory = generator.EventFactory(seed)
    now = time.time()
    made = []
    for _ in range(count):
        events = [generator.client_event(factory.event(now)) for _ in range(batch)]
        if not with_pii:
            for event in events:
                event.pop("pii", None)
        body = msgspec.json.encode(events if batch > 1 else events[0])
        made.append((body, sum("pii" in event for event in events)))
    return made


def load(
    url: str, key: str, payloads: list[tuple[bytes, int]], clients: int, seconds: float, batch: int
) -> dict:
    latencies: list[float] = []
    accepted = [0, 0]  # events, events with PII
    lock = threading.Lock()
    next_body = iter(payloads)
    deadline = time.monotonic() + seconds

    def client() -> None:
        sender = EventSender(url, key)
        mine, taken, taken_with_pii = [], 0, 0
        while time.monotonic() < deadline:
            with lock:
                body, with_pii = next(next_body, (None, 0))
            if body is None:
                break
            started = time.perf_counter()
            status, answer = sender.post(body)
            mine.append(time.perf_counter() - started)
            assert status == 202 and answer["rejected"] == answer["duplicates"] == 0, (status, answer)
            taken += answer["accepted"]
            taken_with_pii += with_pii
        with lock:
            latencies.extend(mine)
            accepted[0] += taken
            accepted[1] += taken_with_pii

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "events_per_request": batch,
        "client_threads": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "events_accepted": accepted[0],
        "events_with_pii": accepted[1],
        "events_per_second": round(accepted[0] / elapsed),
        "requests_per_second": round(len(latencies) / elapsed),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def spool_bytes(url: str) -> int:
    """Bytes accepted and not yet delivered, from the service's /metrics (the public /healthz
    says only its status)."""
    with urllib.request.urlopen(f"{url}/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith("ingest_spool_bytes "):
                return int(float(line.split()[1]))
    raise RuntimeError("the service's /metrics has no ingest_spool_bytes")


def puts_by_prefix(s3, bucket: str, depth: int) -> Counter:
    """Object versions stored in a bucket (versioning on: one a PUT), by the first `depth`
    parts of their keys."""
    counted: Counter = Counter()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            counted["/".join(version["Key"].split("/")[:depth])] += 1
    return counted


def count_puts(s3, landing: str, vault: str) -> Counter:
    """PUTs so far: into the landing bucket, and into each part of the vault (`pii/keys`,
    `pii/segments`, or `pii/records` as the per-player layout wrote)."""
    return Counter({"landing": puts_by_prefix(s3, landing, 0)[""]}) + puts_by_prefix(s3, vault, 2)


def per_thousand(puts: Counter, events: int) -> dict:
    return {part: round(count * 1000 / events, 1) for part, count in sorted(puts.items())} if events else {}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="instead of the day's results file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    local = subprocess.Popen(
        [str(Path(sys.executable).parent / "gaming-pipeline"), "local-aws", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    exports = {}
    while "AWS_ENDPOINT_URL" not in exports:
        line = local.stdout.readline()
        if line.startswith("export "):
            name, value = line[len("export ") :].strip().split("=", 1)
            exports[name] = value
    env = {**os.environ, **exports, "GAMING_PIPELINE_HOME": str(work)}
    os.environ.update(exports)
    settings = Settings.from_env()
    s3 = aws.client("s3")
    aws.ensure_bucket(s3, settings.pii_bucket)
    for bucket in (settings.landing_bucket, settings.pii_bucket):
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    _, key = keys.create(work / "api-keys.json", "bench")
    port = ports.free_port()
    url = f"http://127.0.0.1:{port}"
    service = processes.start(
        [
            "gaming-pipeline",
            "ingest-server",
            "--port",
            str(port),
            "--flush-seconds",
            "1",
            "--log-level",
            "warning",
        ],
        env,
        work / "ingest.log",
    )
    scenarios = {
        "batched_500_with_pii": (500, True),
        "batched_500_without_pii": (500, False),
        "single_event": (1, False),
    }
    figures = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                spool_bytes(url)
                break
            except OSError:
                assert time.monotonic() < deadline, (work / "ingest.log").read_text()
                time.sleep(0.2)
        for seed, (name, (batch, with_pii)) in enumerate(scenarios.items()):
            # Enough bodies that the clients never run out within the time given.
            needed = int(args.seconds * (60_000 if batch > 1 else 6_000) / batch) + args.clients
            payloads = bodies(batch, needed, with_pii, seed)
            before, puts_before = (
                cpu_seconds(service.pid),
                count_puts(s3, settings.landing_bucket, settings.pii_bucket),
            )
            result = load(url, key, payloads, args.clients, args.seconds, batch)
            result["service_cpu_percent"] = round(
                (cpu_seconds(service.pid) - before) / result["seconds"] * 100
            )
            drained_from = time.monotonic()
            while spool_bytes(url) > 0:
                time.sleep(0.2)
            result["spool_drained_after_seconds"] = round(time.monotonic() - drained_from, 1)
            puts = count_puts(s3, settings.landing_bucket, settings.pii_bucket) - puts_before
            result["s3_puts"] = dict(sorted(puts.items()))
            result["s3_puts_per_1000_events"] = per_thousand(puts, result["events_accepted"])
            result["s3_puts_per_1000_events_with_pii"] = per_thousand(puts, result["events_with_pii"])
            figures[name] = result
            print(name, result, flush=True)
    finally:
        processes.stop([service])
        local.terminate()
        local.wait()
    recording.write(
        "ingest-service",
        {
            **recording.context(("starlette", "uvicorn", "httptools", "msgspec", "cryptography", "moto")),
            "goal": "50,000 events/s accepted, batched, on one worker",
            "setup": "one service process (1 uvicorn worker), flush every 1 s to moto's S3 on 127.0.0.1; "
            f"{args.clients} client threads in the benchmark process, keep-alive, pre-encoded bodies",
            "results": figures,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
