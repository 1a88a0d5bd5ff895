"""Players by pseudonym, and the erased-players list, without the vault's cryptography:
ingestion runs, which check every batch against the list, load only this."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class ErasedPlayers:
    """The players erased so far, by pseudonym, and the key pseudonyms are made with."""

    pseudonym_key: bytes
    player_ids: frozenset[str] = frozenset()

    def player_id(self, device_id: str) -> str:
        return hmac.new(self.pseudonym_key, device_id.encode(), hashlib.sha256).hexdigest()

    def holds(self, device_id: str) -> bool:
        # No erasure yet, no pseudonym to compute: the common case costs nothing per event.
        return bool(self.player_ids) and self.player_id(device_id) in self.player_ids


# For code that has no vault to ask (a benchmark, a test of ingestion alone).
NOBODY_ERASED = ErasedPlayers(b"")
