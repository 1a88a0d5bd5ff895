"""The PII vault: each player's PII sealed to their own key pair, kept apart from the events,
so that erasing a player is deleting one key (crypto-shredding).

Envelope encryption, with the keys in AWS KMS (`KmsKeys`), or, on a machine with no KMS and
only when chosen (GAMING_PIPELINE_PII_KEYS=local), under a local master key (`LocalKeys`):

- A player is known by a pseudonymous id, an HMAC of the device id under the pseudonym key.
  KMS derives that key (GenerateMac of a fixed label under an HMAC key that never leaves
  KMS): stable, but not reversible or guessable without it.
- Each player has an X25519 key pair, made when their first PII arrives. The object
  `<prefix>/keys/<player_id>` holds the public key, and the private key sealed under a data
  key that KMS made (GenerateDataKey) and keeps wrapped. Their PII is sealed to the public
  key (X25519, HKDF-SHA256, AES-256-GCM, bound to the player id) at
  `<prefix>/records/<player_id>/<batch_id>`, one object per batch of their events.
- So the ingest service, which faces the internet, seals PII but can never open it: its role
  may make data keys and MACs, not decrypt (deploy/iam). Opening a record takes the private
  key, so kms:Decrypt of its data key: the erasure and export roles only.
- Without the player's key object no copy of their PII can be opened.
- Rotating the KMS key keeps its earlier material: data keys made before still decrypt.
- Between an HTTP answer and the vault, the ingest service's spool holds PII sealed under the
  pending key (derived as the pseudonym key is, for another purpose), never in clear.
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
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Protocol

from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.pseudonyms import ErasedPlayers
from gaming_pipeline.lib.settings import Settings

NONCE_BYTES = 12
# Nonces of PII waiting in the ingest spool are drawn this many at a time (PiiVault._pending_nonce).
NONCES_PER_DRAW = 256
PUBLIC_BYTES = 32
PSEUDONYM_PURPOSE = b"gaming_pipeline player id"
PENDING_PURPOSE = b"gaming_pipeline pending pii"
# KMS binds each data key to this context: it decrypts only with the same one.
DATA_KEY_CONTEXT = {"purpose": "gaming_pipeline player keys"}
# One data key seals the private keys of the players first seen in this long (one KMS call
# per delivery, not per new player).
DATA_KEY_SECONDS = 300
_RAW = {"encoding": serialization.Encoding.Raw}


class PlayerErased(LookupError):
    """The player's key is gone: their PII can no longer be read."""


def new_master_key() -> str:
    """A fresh local master key as configuration holds it (base64 of 32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _derive(secret: bytes, purpose: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(secret)


def _seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _open(key: bytes, sealed: bytes, context: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)


def _record_key(shared: bytes, ephemeral: bytes) -> bytes:
    return _derive(shared + ephemeral, b"gaming_pipeline pii record")


def seal_to(public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Seal for the holder of the X25519 private key of `public` alone: an ephemeral key
    pair's public half, then AES-GCM under the key both sides derive."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(**_RAW, format=serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    return ephemeral_public + _seal(_record_key(shared, ephemeral_public), plaintext, context)


def open_with(private: X25519PrivateKey, sealed: bytes, context: bytes) -> bytes:
    ephemeral_public = sealed[:PUBLIC_BYTES]
    shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    return _open(_record_key(shared, ephemeral_public), sealed[PUBLIC_BYTES:], context)


class KeyService(Protocol):
    """Where the vault's keys come from: KMS, or a local master key."""

    def derived_key(self, purpose: bytes) -> bytes:
        """A 32-byte key for one purpose, the same every time."""

    def new_data_key(self) -> tuple[bytes, bytes]:
        """A fresh AES-256 data key: (the key, the key wrapped, to be stored)."""

    def open_data_key(self, wrapped: bytes) -> bytes:
        """The data key a wrapped one holds (only for the roles that may decrypt)."""


@dataclass(frozen=True)
class KmsKeys:
    """AWS KMS: a symmetric key wraps the data keys, an HMAC key derives the others."""

    kms: object
    data_key_id: str
    mac_key_id: str

    def derived_key(self, purpose: bytes) -> bytes:
        return self.kms.generate_mac(KeyId=self.mac_key_id, Message=purpose, MacAlgorithm="HMAC_SHA_256")[
            "Mac"
        ]

    def new_data_key(self) -> tuple[bytes, bytes]:
        made = self.kms.generate_data_key(
            KeyId=self.data_key_id, KeySpec="AES_256", EncryptionContext=DATA_KEY_CONTEXT
        )
        return made["Plaintext"], made["CiphertextBlob"]

    def open_data_key(self, wrapped: bytes) -> bytes:
        # No KeyId: the wrapped key names the KMS key that made it, so data keys made before
        # the alias moved to a new key (a manual rotation) still open, as they do after
        # KMS's own rotation, which keeps the earlier material.
        return self.kms.decrypt(CiphertextBlob=wrapped, EncryptionContext=DATA_KEY_CONTEXT)["Plaintext"]


@dataclass(frozen=True)
class LocalKeys:
    """The fallback for a machine with no KMS: every key derives from one master key held
    in configuration, so whoever holds it (the ingest service too) can open all PII."""

    master_key: str

    @cached_property
    def _master(self) -> bytes:
        key = base64.b64decode(self.master_key, validate=True)
        if len(key) != 32:
            raise ValueError("the PII master key must be 32 bytes, base64-encoded")
        return key

    def derived_key(self, purpose: bytes) -> bytes:
        return _derive(self._master, purpose)

    def new_data_key(self) -> tuple[bytes, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        return key, _seal(self.derived_key(b"gaming_pipeline data key wrapping"), key, b"data key")

    def open_data_key(self, wrapped: bytes) -> bytes:
        return _open(self.derived_key(b"gaming_pipeline data key wrapping"), wrapped, b"data key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class PiiVault:
    """PII records in an S3 bucket under a prefix, sealed to one key pair per player."""

    s3: object
    bucket: str
    keys: KeyService
    prefix: str = "pii"
    # The data key sealing new players' private keys: (made at, key, wrapped).
    _data_key: list = field(default_factory=list, compare=False, repr=False)
    # Random nonces not used yet, for seal_pending.
    _nonces: list = field(default_factory=list, compare=False, repr=False)

    @cached_property
    def pseudonym_key(self) -> bytes:
        return self.keys.derived_key(PSEUDONYM_PURPOSE)

    @cached_property
    def pending_key(self) -> AESGCM:
        return AESGCM(self.keys.derived_key(PENDING_PURPOSE))

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
        nonce = self._pending_nonce()
        return nonce + self.pending_key.encrypt(nonce, json.dumps(pii).encode(), player_id.encode())

    def _pending_nonce(self) -> bytes:
        """A random nonce never used before, from a draw of NONCES_PER_DRAW: os.urandom lets go
        of the GIL, and the ingest service's event loop, sealing a request's PII event by event,
        waited at each call for the delivery thread to give it back. The pool is this vault's,
        made in the service's own process, so no fork shares it."""
        try:
            return self._nonces.pop()
        except IndexError:
            drawn = os.urandom(NONCE_BYTES * NONCES_PER_DRAW)
            self._nonces.extend(drawn[at : at + NONCE_BYTES] for at in range(0, len(drawn), NONCE_BYTES))
            return self._nonces.pop()

    def open_pending(self, player_id: str, sealed: bytes) -> dict:
        return json.loads(
            self.pending_key.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], player_id.encode())
        )

    def _key_object(self, player_id: str) -> str:
        return f"{self.prefix}/keys/{player_id}"

    def _records_prefix(self, player_id: str) -> str:
        return f"{self.prefix}/records/{player_id}/"

    def _erased_object(self, player_id: str) -> str:
        return f"{self.prefix}/erased/{player_id}"

    def _player_key(self, player_id: str) -> dict:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key_object(player_id))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise PlayerErased(f"no key for player {player_id}: erased, or never seen") from None
        return json.loads(body)

    def _sealing_data_key(self) -> tuple[bytes, bytes]:
        if not self._data_key or time.monotonic() - self._data_key[0] > DATA_KEY_SECONDS:
            self._data_key[:] = [time.monotonic(), *self.keys.new_data_key()]
        return self._data_key[1], self._data_key[2]

    def _new_player_key(self, player_id: str) -> bytes:
        """A first key pair for the player, and its public key; if another writer made one
        meanwhile, theirs."""
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes(**_RAW, format=serialization.PublicFormat.Raw)
        data_key, wrapped = self._sealing_data_key()
        raw = private.private_bytes(
            **_RAW, format=serialization.PrivateFormat.Raw, encryption_algorithm=serialization.NoEncryption()
        )
        body = {
            "public": _b64(public),
            "data_key": _b64(wrapped),
            "private": _b64(_seal(data_key, raw, player_id.encode())),
        }
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self._key_object(player_id),
                Body=json.dumps(body).encode(),
                IfNoneMatch="*",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "PreconditionFailed":
                raise
            return base64.b64decode(self._player_key(player_id)["public"])
        return public

    def _is_erased(self, player_id: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._erased_object(player_id))
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
            return False
        return True

    def store(self, player_id: str, batch_id: str, records: list[dict]) -> None:
        """Seal a batch of one player's PII records to their public key. Storing the same
        batch id again replaces it, so a batch delivered twice is held once. The PII of an
        erased player is dropped, never given a new key."""
        try:
            public = base64.b64decode(self._player_key(player_id)["public"])
        except PlayerErased:
            if self._is_erased(player_id):
                return
            public = self._new_player_key(player_id)
        sealed = seal_to(public, json.dumps(records).encode(), player_id.encode())
        self.s3.put_object(Bucket=self.bucket, Key=self._records_prefix(player_id) + batch_id, Body=sealed)

    def _private_key(self, player_id: str) -> X25519PrivateKey:
        held = self._player_key(player_id)
        data_key = self.keys.open_data_key(base64.b64decode(held["data_key"]))
        raw = _open(data_key, base64.b64decode(held["private"]), player_id.encode())
        return X25519PrivateKey.from_private_bytes(raw)

    def read(self, device_id: str) -> list[dict]:
        """Every PII record held for a player, decrypted; PlayerErased once they are erased."""
        player = self.player_id(device_id)
        private = self._private_key(player)
        records = []
        for name in self._record_keys(player):
            sealed = self.s3.get_object(Bucket=self.bucket, Key=name)["Body"].read()
            try:
                records.extend(json.loads(open_with(private, sealed, player.encode())))
            except InvalidTag as error:
                raise ValueError(f"PII record {name} fails authentication: altered or misplaced") from error
        return records

    def _record_keys(self, player_id: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._records_prefix(player_id)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def shred(self, player_id: str) -> dict:
        """Erase a player's PII: delete their key, which makes every copy of it unreadable,
        then their records. Returns what was there to delete."""
        self.mark_erased(player_id)  # already, unless called on its own
        key_object = self._key_object(player_id)
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key_object).get("Contents", [])
        had_key = any(obj["Key"] == key_object for obj in listed)
        self.s3.delete_object(Bucket=self.bucket, Key=key_object)
        records = self._record_keys(player_id)
        for name in records:
            self.s3.delete_object(Bucket=self.bucket, Key=name)
        return {"key_shredded": had_key, "records_deleted": len(records)}


def keys_from(settings: Settings) -> KeyService:
    """The key service the settings choose: KMS, or the explicit local fallback."""
    if settings.pii_keys == "local":
        return LocalKeys(settings.resolved_pii_master_key())
    # A request never waits long on KMS: the service answers 503 and the client retries.
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
    return KmsKeys(aws.client("kms", config), settings.pii_kms_key, settings.pii_mac_key)
