"""Per-application API keys, stored hashed in one JSON file, rotatable without a restart.

A key is shown once, when it is created; the file keeps only its SHA-256 (keys are 256
random bits, so a fast hash is as safe as a slow one and costs nothing per request). The
service re-reads the file when it changes, so adding a new key for an app, moving its
clients over and revoking the old one never restarts anything.

File layout: {"keys": [{"id", "app", "sha256", "created_at"}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("gaming_pipeline.ingest_service")

KEY_PREFIX = "gpk_"
# How often the service looks at the file for changes (for revocations; a key it does not
# know makes it look at once, so a new key works from its first request).
RELOAD_SECONDS = 1.0


def hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who a valid key belongs to: logged by app and key id, never by the key."""

    app: str
    key_id: str


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["keys"]


def _write(path: Path, keys: list[dict]) -> None:
    """Replace the file at once (write, fsync, rename) so the service never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"keys": keys}, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def create(path: Path, app: str) -> tuple[str, str]:
    """A new key for `app` (earlier keys of the app keep working until revoked): (id, key)."""
    if not app.strip():
        raise ValueError("an API key needs the name of the application it is for")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key-" + secrets.token_hex(4)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    _write(path, [*_read(path), {"id": key_id, "app": app, "sha256": hashed(key), "created_at": created}])
    return key_id, key


def revoke(path: Path, key_id: str) -> dict:
    keys = _read(path)
    gone = [entry for entry in keys if entry["id"] == key_id]
    if not gone:
        raise KeyError(f"no API key with id {key_id!r} in {path}")
    _write(path, [entry for entry in keys if entry["id"] != key_id])
    return gone[0]


def listed(path: Path) -> list[dict]:
    """The keys' ids, apps and creation times (their hashes left out)."""
    return [{k: v for k, v in entry.items() if k != "sha256"} for entry in _read(path)]


class KeyRing:
    """The service's view of the key file, refreshed when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._by_hash: dict[str, Caller] = {}
        self._stamp: tuple | None = None
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as error:
            log.error("API key file %s cannot be read, keeping the keys loaded before: %s", self.path, error)
            return
        if stamp == self._stamp:
            return
        try:
            entries = _read(self.path)
            self._by_hash = {entry["sha256"]: Caller(entry["app"], entry["id"]) for entry in entries}
        except (OSError, ValueError, KeyError, TypeError) as error:
            # A hand edit gone wrong must not lock every client out: the last good keys stay.
            log.error("API key file %s is unreadable, keeping the keys loaded before: %s", self.path, error)
        self._stamp = stamp

    def caller(self, key: str | None) -> Caller | None:
        if time.monotonic() - self._checked >= RELOAD_SECONDS:
            self.reload()
        if not key:
            return None
        digest = hashed(key)
        if digest not in self._by_hash:
            self.reload()
        return self._by_hash.get(digest)

    def __len__(self) -> int:
        return len(self._by_hash)
