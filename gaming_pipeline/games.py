"""The games registry: the one place that says which games exist and which events they send.

Every per-game table, check and KPI is derived from this list, so adding a game here is
all it takes to give it a table. `keyword` is what clients send as
`eventParams.game_keyword` and names the table `game_<keyword>_events`.

A studio lists its own games in a TOML file named by `GAMING_PIPELINE_GAMES`, one
`[[game]]` table each (`keyword`, `app_name`, optional `popularity`), with the events they
send (catalog.py); unset, the 30 games of `games.toml` beside this module are the registry.
It is read when the code loads: the asset graph has a table per game.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from gaming_pipeline.catalog import EventSpec, Param, columns, game_catalogs

_KEYWORD = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
# The KPI tables' row for every game together; no game may take this keyword.
ALL_GAMES = "all_games"


@dataclass(frozen=True)
class Game:
    keyword: str
    app_name: str
    # Relative share of players, so generated traffic is uneven across games like a real
    # portfolio (a few hits, a long tail).
    popularity: float = 1.0
    # The game's event catalog: its events by name (catalog.py).
    events: dict[str, EventSpec] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not _KEYWORD.match(self.keyword):
            raise ValueError(
                f"game keyword {self.keyword!r} must be lower-case letters, digits and "
                "underscores, starting with a letter (it becomes part of a table name)"
            )
        if self.keyword == ALL_GAMES:
            raise ValueError(f"{ALL_GAMES!r} names the all-games rows of the KPI tables")

    @property
    def table_name(self) -> str:
        return f"game_{self.keyword}_events"

    @cached_property
    def columns(self) -> tuple[Param, ...]:
        """The game's own parameters, each a column of its table."""
        return columns(self.events)


GAMES_FILE_VARIABLE = "GAMING_PIPELINE_GAMES"


DEFAULT_GAMES_FILE = Path(__file__).with_name("games.toml")


@dataclass(frozen=True)
class Registry:
    games: tuple[Game, ...]
    # The events of a game the registry does not list (yet): the seed's and the shared ones.
    shared_events: dict[str, EventSpec]


def load_registry(path: str | Path, named: str = "") -> Registry:
    """A games registry and its event catalog from a TOML file; every fault is named with the
    file (as `named`, by default `GAMING_PIPELINE_GAMES=<path>`), and the catalog's with their
    line, game, event and parameter (the CatalogError is the cause)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        document = tomllib.loads(text)
        entries = document.get("game")
        if not isinstance(entries, list) or not entries:
            raise ValueError("it lists no games: give each one a [[game]] table")
        if not all(isinstance(entry, dict) for entry in entries):
            raise ValueError("each game is a [[game]] table of `keyword`, `app_name` and so on")
        if set(document) - {"game", "events"}:
            raise ValueError(
                f"it has {sorted(set(document) - {'game', 'events'})}: only [[game]] and [events]"
            )
        shared, catalogs = game_catalogs(document, text)
        games = []
        for number, (entry, catalog) in enumerate(zip(entries, catalogs, strict=True), 1):
            unknown = set(entry) - {"keyword", "app_name", "popularity", "events"}
            if unknown or not {"keyword", "app_name"} <= set(entry):
                raise ValueError(
                    f"game {number} needs `keyword` and `app_name` (and may have `popularity` and "
                    f"`events`), it has {sorted(entry)}"
                )
            games.append(
                Game(
                    str(entry["keyword"]),
                    str(entry["app_name"]),
                    float(entry.get("popularity", 1.0)),
                    catalog,
                )
            )
        return Registry(_registry(games), shared)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{named or f'{GAMES_FILE_VARIABLE}={path}'}: {error}") from error


def load_games(path: str | Path) -> tuple[Game, ...]:
    """A studio's games registry from its TOML file (load_registry)."""
    return load_registry(path).games


def _registry(games: list[Game] | tuple[Game, ...]) -> tuple[Game, ...]:
    keywords = [game.keyword for game in games]
    twice = sorted({keyword for keyword in keywords if keywords.count(keyword) > 1})
    if twice:
        raise ValueError(f"the games registry lists {', '.join(twice)} more than once")
    return tuple(games)


REGISTRY = load_registry(os.environ.get(GAMES_FILE_VARIABLE) or DEFAULT_GAMES_FILE)
DEFAULT_GAMES: tuple[Game, ...] = load_games(DEFAULT_GAMES_FILE)
GAMES: tuple[Game, ...] = REGISTRY.games
GAMES_BY_KEYWORD: dict[str, Game] = {game.keyword: game for game in GAMES}


def events_of(game_keyword: str) -> dict[str, EventSpec]:
    """The catalog an event of this game is checked against: the game's, or for a game the
    registry does not list, the events every game sends."""
    game = GAMES_BY_KEYWORD.get(game_keyword)
    return game.events if game else REGISTRY.shared_events
