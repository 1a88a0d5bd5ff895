"""Players by pseudonym, and the erased-players list, without the vault's cryptography:
ingestion runs, which check every batch against the list, load only this."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import msgspec


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

    def holds_line(self, line: bytes | str) -> bool:
        """Whether a landing line is an erased player's event (a line that is not an event's
        JSON is nobody's). No erasure yet: not even parsed."""
        if not self.player_ids:
            return False
        device = device_id_of_line(line)
        return device is not None and self.holds(device)


# For code that has no vault to ask (a benchmark, a test of ingestion alone).
NOBODY_ERASED = ErasedPlayers(b"")


class _Params(msgspec.Struct):
    device_id: str


class _Player(msgspec.Struct):
    """The one field of a landing line that says whose event it is."""

    eventParams: _Params


_player_of = msgspec.json.Decoder(_Player).decode


def device_id_of_line(line: bytes | str) -> str | None:
    """The device id of a landing line, None for a line that is not an event's JSON."""
    try:
        return _player_of(line).eventParams.device_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
