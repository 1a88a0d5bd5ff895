"""The PII vault: each player's PII sealed to their own key pair, kept apart from the events,
so that erasing a player is deleting one key (crypto-shredding).

Envelope encryption, with the keys in AWS KMS (`KmsKeys`), or, on a machine with no KMS and
only when chosen (GAMING_PIPELINE_PII_KEYS=local), under a local master key (`LocalKeys`):

- A player is known by a pseudonymous id, an HMAC of the device id under the pseudonym key.
  KMS derives that key (GenerateMac of a fixed label under an HMAC key that never leaves
  KMS): stable, but not reversible or guessable without it.
- Each player has an X25519 key pair, made when their first PII arrives. The object
  `<prefix>/keys/<player_id>` holds the public key, and the private key sealed under a data
  key that KMS made (GenerateDataKey) and keeps wrapped: one PUT for each new player, as a
  key is a player's by nature. A key object never changes, so the public keys looked up are
  held (the last PUBLIC_KEYS_HELD players'): a returning player costs no request.
- The PII the ingest service delivers with one spool segment is one object,
  `<prefix>/segments/<segment>` (the segment named as its landing objects are, see
  s3_events.ingest_segment): a line for each player, their pseudonymous id and their records
  sealed to their own public key (X25519, HKDF-SHA256, AES-256-GCM, bound to the player id).
  So the vault's PUTs follow the landing objects, one a segment, not one a player and
  segment. Delivering a segment again replaces its object: it is held once.
- A player's segments are found from their events: each event lands in an object named after
  the segment its PII was delivered with, and the raw table's and the quarantine's lineage
  (`_source_object`) keep that name, as do the objects no run has taken in yet. Reading or
  erasing a player takes those segments (s3_events.ingest_segments), so it reads a few objects,
  never the whole vault, and no index costs a write: one written with each segment could
  only be searched by reading all of them, and one kept per player would bring back a PUT per
  player and segment. The index holds no PII either way: segment names, and pseudonyms in the
  vault's own objects, as the key objects' names have always held them.
- Vaults written before hold a player's records at `<prefix>/records/<player_id>/<segment>`,
  an object a player and segment: found by listing the player's prefix, read and erased
  beside the segments.
- So the ingest service, which faces the internet, seals PII but can never open it: its role
  may make data keys and MACs, not decrypt (deploy/iam). Opening a record takes the private
  key, so kms:Decrypt of its data key: the erasure and export roles only.
- Without the player's key object no copy of their PII can be opened, in any segment.
- Erasing a player deletes that key first, then takes their lines out of the segment
  objects (rewritten, conditionally, or deleted when no player is left) and deletes their
  objects of the earlier layout, so their sealed records are gone too, not only unreadable.
  The segments to clean are noted (`<prefix>/erasing/<player_id>`) before the erasure empties
  the tables that lead to them, so a run that fails midway finds them when repeated.
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
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
from gaming_pipeline.lib.object_lines import read_object, rewrite_without
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
# Public keys of the players sealed to lately, so that a returning player's PII costs no GET
# of their key object: at some 300 bytes each, 30 MB at most.
PUBLIC_KEYS_HELD = 100_000
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


def _segment_line(player_id: str, sealed: bytes) -> str:
    return json.dumps({"player": player_id, "sealed": _b64(sealed)}) + "\n"


def _sealed_for(player_id: str, segment_body: bytes) -> bytes | None:
    """The player's sealed records in a segment object, None if it holds none of theirs."""
    for line in segment_body.splitlines():
        entry = json.loads(line)
        if entry["player"] == player_id:
            return base64.b64decode(entry["sealed"])
    return None


def _line_of(player_id: str) -> Callable[[bytes], bool]:
    """Whether a line of a segment object is the player's."""
    return lambda line: bool(line.strip()) and json.loads(line)["player"] == player_id


@dataclass(frozen=True)
class VaultErasure:
    """What shredding a player took out of the vault."""

    bucket: str
    key_shredded: bool
    # Sealed records deleted: one for each segment the player had PII in.
    records_deleted: int
    segments_rewritten: int
    # Segment objects left with no player, and so deleted.
    segments_deleted: int
    # Objects of the earlier layout, a player and segment each (included in records_deleted).
    player_objects_deleted: int
    # Bucket versioning keeps the earlier versions of what was rewritten or deleted.
    versioned: bool


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
    # Player id -> public key, least recently sealed to first (_public_key).
    _public_keys: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)

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

    def _segment_object(self, segment: str) -> str:
        return f"{self.prefix}/segments/{segment}"

    def _records_prefix(self, player_id: str) -> str:
        """Where the earlier layout kept a player's records, an object a segment."""
        return f"{self.prefix}/records/{player_id}/"

    def _erasing_object(self, player_id: str) -> str:
        return f"{self.prefix}/erasing/{player_id}"

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

    def _public_key(self, player_id: str) -> bytes | None:
        """The public key the player's PII is sealed to, made with their first PII; None for
        an erased player, whose PII is dropped, never given a new key. Held once looked up:
        a key object never changes (only an erasure deletes it, and deliveries drop erased
        players before they seal), so a player's key costs one request, not one a segment."""
        if player_id in self._public_keys:
            self._public_keys.move_to_end(player_id)
            return self._public_keys[player_id]
        try:
            public = base64.b64decode(self._player_key(player_id)["public"])
        except PlayerErased:
            if self._is_erased(player_id):
                return None
            public = self._new_player_key(player_id)
        self._public_keys[player_id] = public
        if len(self._public_keys) > PUBLIC_KEYS_HELD:
            self._public_keys.popitem(last=False)
        return public

    def store(self, segment: str, records_by_player: dict[str, list[dict]]) -> None:
        """Seal each player's PII records of one delivered segment to that player's public
        key, all in one object. Storing the segment again replaces the object, so a segment
        delivered twice is held once; the object is written even when no player is left (all
        erased since an earlier delivery of it), so that it never keeps what that delivery
        sealed for them."""
        lines = [
            _segment_line(player, seal_to(public, json.dumps(records).encode(), player.encode()))
            for player, records in sorted(records_by_player.items())
            if (public := self._public_key(player)) is not None
        ]
        self.s3.put_object(
            Bucket=self.bucket, Key=self._segment_object(segment), Body="".join(lines).encode()
        )

    def _private_key(self, player_id: str) -> X25519PrivateKey:
        held = self._player_key(player_id)
        data_key = self.keys.open_data_key(base64.b64decode(held["data_key"]))
        raw = _open(data_key, base64.b64decode(held["private"]), player_id.encode())
        return X25519PrivateKey.from_private_bytes(raw)

    def read(self, device_id: str, segments: Iterable[str]) -> list[dict]:
        """Every PII record held for a player, decrypted, segment by segment: in the segments
        named (those their events were delivered in: s3_events.ingest_segments) and in the
        earlier layout. PlayerErased once they are erased."""
        player = self.player_id(device_id)
        private = self._private_key(player)
        records = []
        for segment, sealed in sorted(self._sealed_records(player, segments).items()):
            try:
                records.extend(json.loads(open_with(private, sealed, player.encode())))
            except InvalidTag as error:
                raise ValueError(
                    f"the PII of segment {segment} fails authentication: altered or misplaced"
                ) from error
        return records

    def _sealed_records(self, player_id: str, segments: Iterable[str]) -> dict[str, bytes]:
        """The player's sealed records by segment. A segment delivered under both layouts (by
        the earlier code, then again after a crash by this one) holds the same records
        twice: it counts once."""
        found = {}
        for segment in set(segments):
            held = read_object(self.s3, self.bucket, self._segment_object(segment))
            if held is not None and (sealed := _sealed_for(player_id, held[1])) is not None:
                found[segment] = sealed
        prefix = self._records_prefix(player_id)
        for name in self._player_objects(player_id):
            segment = name.removeprefix(prefix)
            if segment not in found and (held := read_object(self.s3, self.bucket, name)) is not None:
                found[segment] = held[1]
        return found

    def _player_objects(self, player_id: str) -> list[str]:
        """The player's objects of the earlier layout."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._records_prefix(player_id)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def note_segments(self, player_id: str, segments: Iterable[str]) -> None:
        """Note, for `shred`, the segments that may hold the player's sealed records, before
        an erasure empties the tables and landing objects they are found through: a run that
        fails after that finds them when repeated. Adds to what an earlier run noted."""
        noted = sorted({*self._noted_segments(player_id), *segments})
        self.s3.put_object(
            Bucket=self.bucket, Key=self._erasing_object(player_id), Body=json.dumps(noted).encode()
        )

    def _noted_segments(self, player_id: str) -> list[str]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._erasing_object(player_id))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return []
        return json.loads(body)

    def shred(self, player_id: str) -> VaultErasure:
        """Erase a player's PII: delete their key, which makes every copy of it unreadable,
        then take their sealed records out of the segments noted for the erasure
        (note_segments) and delete their objects of the earlier layout. Repeating it finds
        nothing more."""
        self.mark_erased(player_id)  # already, unless called on its own
        self._public_keys.pop(player_id, None)
        key_object = self._key_object(player_id)
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key_object).get("Contents", [])
        had_key = any(obj["Key"] == key_object for obj in listed)
        self.s3.delete_object(Bucket=self.bucket, Key=key_object)
        outcomes = [
            rewrite_without(self.s3, self.bucket, self._segment_object(segment), _line_of(player_id))
            for segment in self._noted_segments(player_id)
        ]
        player_objects = self._player_objects(player_id)
        for name in player_objects:
            self.s3.delete_object(Bucket=self.bucket, Key=name)
        # Last: until the records are out, a repeated run needs the segments noted.
        self.s3.delete_object(Bucket=self.bucket, Key=self._erasing_object(player_id))
        return VaultErasure(
            bucket=self.bucket,
            key_shredded=had_key,
            records_deleted=sum(removed for removed, _ in outcomes) + len(player_objects),
            segments_rewritten=sum(outcome == "rewritten" for _, outcome in outcomes),
            segments_deleted=sum(outcome == "deleted" for _, outcome in outcomes),
            player_objects_deleted=len(player_objects),
            versioned=aws.keeps_versions(self.s3, self.bucket),
        )


def keys_from(settings: Settings) -> KeyService:
    """The key service the settings choose: KMS, or the explicit local fallback."""
    if settings.pii_keys == "local":
        return LocalKeys(settings.resolved_pii_master_key())
    # A request never waits long on KMS: the service answers 503 and the client retries.
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
    return KmsKeys(aws.client("kms", config), settings.pii_kms_key, settings.pii_mac_key)
