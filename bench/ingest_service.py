"""How many events per second the ingest service takes, and how fast it answers, on this
machine: one service process (one uvicorn worker) against the local S3 endpoint, loaded by
client threads in this process over keep-alive connections.

    .venv/bin/python bench/ingest_service.py [--seconds 15] [--clients 4]

Scenarios: batches of 500 generated events with PII on session starts (as the demo's
clients send them), the same without PII, and one event per request. Every event carries
its own event_id, as a real client's would, so the duplicate window does its work too.
The service flushes every second (size 5 MiB), so delivery to S3 and the PII vault runs
during the measurement. After each load the time for the spool to drain is measured.
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
from pathlib import Path

import msgspec
import recording

from gaming_pipeline.ingest_service import keys
from gaming_pipeline.ingest_service.client import EventSender
from gaming_pipeline.local import generator, ports, processes


def bodies(batch: int, count: int, with_pii: bool, seed: int) -> list[bytes]:
    """`count` request bodies of `batch` events each, every event_id new."""
    factory = generator.EventFactory(seed)
    now = time.time()
    made = []
    for _ in range(count):
        events = [generator.client_event(factory.event(now)) for _ in range(batch)]
        if not with_pii:
            for event in events:
                event.pop("pii", None)
        made.append(msgspec.json.encode(events if batch > 1 else events[0]))
    return made


def load(url: str, key: str, payloads: list[bytes], clients: int, seconds: float, batch: int) -> dict:
    latencies: list[float] = []
    accepted = [0]
    lock = threading.Lock()
    next_body = iter(payloads)
    deadline = time.monotonic() + seconds

    def client() -> None:
        sender = EventSender(url, key)
        mine, taken = [], 0
        while time.monotonic() < deadline:
            with lock:
                body = next(next_body, None)
            if body is None:
                break
            started = time.perf_counter()
            status, answer = sender.post(body)
            mine.append(time.perf_counter() - started)
            assert status == 202 and answer["rejected"] == answer["duplicates"] == 0, (status, answer)
            taken += answer["accepted"]
        with lock:
            latencies.extend(mine)
            accepted[0] += taken

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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
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
            before = cpu_seconds(service.pid)
            result = load(url, key, payloads, args.clients, args.seconds, batch)
            result["service_cpu_percent"] = round(
                (cpu_seconds(service.pid) - before) / result["seconds"] * 100
            )
            drained_from = time.monotonic()
            while spool_bytes(url) > 0:
                time.sleep(0.2)
            result["spool_drained_after_seconds"] = round(time.monotonic() - drained_from, 1)
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
    )


if __name__ == "__main__":
    main()
