"""The PII vault: each player's PII encrypted under their own data key, kept apart from the
events, so that erasing a player is deleting one key (crypto-shredding).

- A player is known by a pseudonymous id, an HMAC of the device id under a key derived from
  the master key: stable, but not reversible or guessable without the master key.
- Each player's data key (AES-256-GCM) is stored wrapped by the master key at
  `<prefix>/keys/<player_id>`; their PII at `<prefix>/records/<player_id>/<batch_id>`, one
  object per batch of their events, encrypted with authenticated encryption bound to the
  player id.
- Without the data key a record cannot be decrypted, whatever copies of it remain.
- Between an HTTP answer and the vault, the ingest service's spool holds PII sealed under a
  key derived from the master key (`seal_pending`), never in clear.
- Erasing a player leaves `<prefix>/erased/<player_id>`: the erased-players list, which the
  ingest service (at each request and each delivery) and ingestion (at each batch) consult,
  so no event of an erased player is taken again, however long it waited in a spool or on
  the queue.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gaming_pipeline.lib.pseudonyms import ErasedPlayers

NONCE_BYTES = 12


class PlayerErased(LookupError):
    """The player's data key is gone: their PII can no longer be read."""


def new_master_key() -> str:
    """A fresh master key as configuration holds it (base64 of 32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def _seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _open(key: bytes, sealed: bytes, context: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)


@dataclass(frozen=True)
class PiiVault:
    """PII records in an S3 bucket under a prefix, one data key per player."""

    s3: object
    bucket: str
    master_key: str
    prefix: str = "pii"

    @cached_property
    def _master(self) -> bytes:
        key = base64.b64decode(self.master_key, validate=True)
        if len(key) != 32:
            raise ValueError("the PII master key must be 32 bytes, base64-encoded")
        return key

    @cached_property
    def pseudonym_key(self) -> bytes:
        return _derive(self._master, b"gaming_pipeline player id")

    @cached_property
    def _wrapping_key(self) -> bytes:
        return _derive(self._master, b"gaming_pipeline data key wrapping")

    @cached_property
    def _pending_key(self) -> AESGCM:
        return AESGCM(_derive(self._master, b"gaming_pipeline pending pii"))

    def player_id(self, device_id: str) -> str:
        """The pseudonymous id the vault, logs and audit records know a player by."""
        return ErasedPlayers(self.pseudonym_key).player_id(device_id)

    def erased(self) -> ErasedPlayers:
        """The erased-players list as it is now (one listing; no vault bucket yet: nobody)."""
        prefix = self._erased_object("")
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            names = [obj["Key"].removeprefix(prefix) for page in pages for obj in page.get("Contents", [])]
        except ClientError as error:
            if error.response["Error"]["Code"] != "NoSuchBucket":
                raise
            names = []
        return ErasedPlayers(self.pseudonym_key, frozenset(names))

    def mark_erased(self, player_id: str) -> None:
        """Put the player on the erased-players list: from now on none of their events or PII
        is taken. The first step of an erasure, so that nothing of theirs arrives behind it."""
        erased_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.s3.put_object(Bucket=self.bucket, Key=self._erased_object(player_id), Body=erased_at.encode())

    def seal_pending(self, player_id: str, pii: dict) -> bytes:
        """PII sealed for the time it waits to reach the vault (in the ingest spool)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._pending_key.encrypt(nonce, json.dumps(pii).encode(), player_id.encode())

    def open_pending(self, player_id: str, sealed: bytes) -> dict:
        return json.loads(
            self._pending_key.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], player_id.encode())
        )

    def _key_object(self, player_id: str) -> str:
        return f"{self.prefix}/keys/{player_id}"

    def _records_prefix(self, player_id: str) -> str:
        return f"{self.prefix}/records/{player_id}/"

    def _erased_object(self, player_id: str) -> str:
        return f"{self.prefix}/erased/{player_id}"

    def _data_key(self, player_id: str) -> bytes:
        try:
            wrapped = self.s3.get_object(Bucket=self.bucket, Key=self._key_object(player_id))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise PlayerErased(f"no data key for player {player_id}: erased, or never seen") from None
        return _open(self._wrapping_key, wrapped, player_id.encode())

    def _new_data_key(self, player_id: str) -> bytes:
        """A first data key for the player; if another writer made one meanwhile, theirs."""
        key = AESGCM.generate_key(bit_length=256)
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self._key_object(player_id),
                Body=_seal(self._wrapping_key, key, player_id.encode()),
                IfNoneMatch="*",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "PreconditionFailed":
                raise
            return self._data_key(player_id)
        return key

    def _is_erased(self, player_id: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._erased_object(player_id))
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
            return False
        return True

    def store(self, player_id: str, batch_id: str, records: list[dict]) -> None:
        """Encrypt a batch of one player's PII records under their data key. Storing the same
        batch id again replaces it, so a batch delivered twice is held once. The PII of an
        erased player is dropped, never given a new key."""
        try:
            key = self._data_key(player_id)
        except PlayerErased:
            if self._is_erased(player_id):
                return
            key = self._new_data_key(player_id)
        sealed = _seal(key, json.dumps(records).encode(), player_id.encode())
        self.s3.put_object(Bucket=self.bucket, Key=self._records_prefix(player_id) + batch_id, Body=sealed)

    def read(self, device_id: str) -> list[dict]:
        """Every PII record held for a player, decrypted; PlayerErased once they are erased."""
        player = self.player_id(device_id)
        key = self._data_key(player)
        records = []
        for name in self._record_keys(player):
            sealed = self.s3.get_object(Bucket=self.bucket, Key=name)["Body"].read()
            try:
                records.extend(json.loads(_open(key, sealed, player.encode())))
            except InvalidTag as error:
                raise ValueError(f"PII record {name} fails authentication: altered or misplaced") from error
        return records

    def _record_keys(self, player_id: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._records_prefix(player_id)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def shred(self, player_id: str) -> dict:
        """Erase a player's PII: delete their data key, which makes every copy of it
        unreadable, then their records. Returns what was there to delete."""
        self.mark_erased(player_id)  # already, unless called on its own
        key_object = self._key_object(player_id)
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key_object).get("Contents", [])
        had_key = any(obj["Key"] == key_object for obj in listed)
        self.s3.delete_object(Bucket=self.bucket, Key=key_object)
        records = self._record_keys(player_id)
        for name in records:
            self.s3.delete_object(Bucket=self.bucket, Key=name)
        return {"key_shredded": had_key, "records_deleted": len(records)}
