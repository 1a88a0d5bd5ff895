"""The ingest service as tests meet it: a real `gaming-pipeline ingest-server` process on a
free 127.0.0.1 port, its own home (spool, keys, PII master key), reached over HTTP."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gaming_pipeline.ingest_service import keys
from gaming_pipeline.ingest_service.client import EventSender
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.pii import LocalKeys, PiiVault, keys_from
from gaming_pipeline.lib.s3_events import ingest_segments
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.local import ports, processes


@dataclass
class IngestService:
    home: Path
    bucket: str
    options: list[str] = field(default_factory=lambda: ["--flush-seconds", "1"])
    environ: dict[str, str] = field(default_factory=dict)
    # Empty: the PII keys are the local endpoint's KMS keys; else this local master key.
    master_key: str = ""
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "ingest.log"

    @property
    def pii_bucket(self) -> str:
        return f"{self.bucket}-pii"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GAMING_PIPELINE_HOME": str(self.home),
            "GAMING_PIPELINE_LANDING_BUCKET": self.bucket,
            "GAMING_PIPELINE_PII_BUCKET": self.pii_bucket,
            **(
                {"GAMING_PIPELINE_PII_KEYS": "local", "GAMING_PIPELINE_PII_MASTER_KEY": self.master_key}
                if self.master_key
                else {}
            ),
            **self.environ,
        }

    def new_key(self, app: str = "test-client") -> tuple[str, str]:
        return keys.create(self.home / "api-keys.json", app)

    def start(self, same_port: bool = False) -> IngestService:
        """Start the service; `same_port` brings it back where its clients knew it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port if same_port else ports.free_port()
        command = ["gaming-pipeline", "ingest-server", "--port", str(self.port), *self.options]
        self.process = processes.start(command, self.env(), self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ingest-server exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                    return self
            except urllib.error.HTTPError as answer:
                # Answering, if only with 503; "starting" while it first asks KMS for its keys.
                if json.loads(answer.read()).get("status") != "starting":
                    return self
                time.sleep(0.05)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"ingest-server did not answer within 60 s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as systemd or Kubernetes would send: the service flushes and stops."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            # uvicorn stops cleanly, then re-raises the signal it caught: the code is -SIGTERM.
            assert self.process.wait(timeout) == -signal.SIGTERM
        finally:
            self.kill()  # on every path: a failed stop leaves nothing running
        assert '"message": "stopped"' in self.log.read_text().splitlines()[-3]

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        processes.signal_groups([self.process], signal.SIGKILL)
        self.process.wait()

    def post(self, body: bytes, key: str | None, content_type="application/json", **headers):
        """One raw POST /v1/events: (status, answer)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"content-type": content_type, **headers}
        if key is not None:
            sent["x-api-key"] = key
        connection.request("POST", "/v1/events", body=body, headers=sent)
        response = connection.getresponse()
        answer = response.read()
        connection.close()
        return response.status, json.loads(answer) if answer else {}

    def sender(self, key: str) -> EventSender:
        return EventSender(self.url, key)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1].decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def vault(self) -> PiiVault:
        keys = LocalKeys(self.master_key) if self.master_key else keys_from(Settings.from_env())
        return PiiVault(aws.client("s3"), self.pii_bucket, keys)

    def read_pii(self, device_id: str) -> list[dict]:
        """The player's PII in the vault, found as export finds it: through the landing
        objects the service delivered it with."""
        pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        objects = [(self.bucket, obj["Key"]) for page in pages for obj in page.get("Contents", [])]
        return self.vault().read(device_id, ingest_segments(objects))


def event(n: int = 0, **changes) -> dict:
    """Client event number n, valid as a client sends it, with `changes` (and `params`, the
    eventParams to change)."""
    base = {
        "event_id": f"evt-{n}",
        "eventName": "levelUp",
        "eventParams": {
            "game_keyword": "ninja_run",
            "app_name": "Ninja Run",
            "platform": "ios",
            "app_version": "1.2.3",
            "device_id": f"d-{n % 7}",
            "client_event_time": "2026-11-23T08:15:02.123Z",
        },
    }
    params = changes.pop("params", {})
    return {**base, **changes, "eventParams": {**base["eventParams"], **params}}


def landed(bucket: str, prefix: str = "") -> dict[str, list[dict]]:
    """Every landing object under a prefix, by key: its events."""
    s3 = aws.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    objects = {}
    for page in pages:
        for obj in page.get("Contents", []):
            body = gzip.decompress(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            objects[obj["Key"]] = [msgspec.json.decode(line) for line in body.splitlines() if line]
    return objects


def wait_until(
    predicate,
    seconds: float = 30,
    what: str = "the condition",
    interval: float = 0.2,
    alive: Sequence[subprocess.Popen] = (),
    diagnosis: Callable[[], str] = str,
):
    """The first true value of predicate() within `seconds`, looked at every `interval`; the
    test fails, with diagnosis(), when time runs out or as soon as a process of `alive` exits."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        for process in alive:
            assert process.poll() is None, (
                f"{processes.described(process)} exited before {what}\n{diagnosis()}"
            )
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {seconds:.0f} s\n{diagnosis()}")
        time.sleep(interval)
