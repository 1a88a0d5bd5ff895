"""The games registry: the one place that says which games exist.

Every per-game table, check and KPI is derived from this list, so adding a game here is
all it takes to give it a table. `keyword` is what clients send as
`eventParams.game_keyword` and names the table `game_<keyword>_events`.

A studio lists its own games in a TOML file named by `GAMING_PIPELINE_GAMES`, one
`[[game]]` table each (`keyword`, `app_name`, optional `popularity`); unset, the 30 games
below are the registry. It is read when the code loads: the asset graph has a table per game.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

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


DEFAULT_GAMES: tuple[Game, ...] = (
    Game("galaxy_miners", "Galaxy Miners", 9.0),
    Game("dragon_quest_tactics", "Dragon Quest Tactics", 7.5),
    Game("candy_kingdom", "Candy Kingdom", 7.0),
    Game("zombie_harvest", "Zombie Harvest", 5.5),
    Game("pixel_racers", "Pixel Racers", 5.0),
    Game("word_wizard", "Word Wizard", 4.5),
    Game("tower_siege", "Tower Siege", 4.0),
    Game("ocean_explorer", "Ocean Explorer", 3.5),
    Game("farm_frenzy", "Farm Frenzy", 3.2),
    Game("ninja_run", "Ninja Run", 3.0),
    Game("puzzle_planet", "Puzzle Planet", 2.8),
    Game("space_trader", "Space Trader", 2.5),
    Game("castle_clash_legends", "Castle Clash Legends", 2.3),
    Game("bubble_pop_saga", "Bubble Pop Saga", 2.1),
    Game("monster_tamer", "Monster Tamer", 2.0),
    Game("city_builder_tycoon", "City Builder Tycoon", 1.8),
    Game("soccer_stars", "Soccer Stars", 1.7),
    Game("mystic_cards", "Mystic Cards", 1.6),
    Game("jewel_match", "Jewel Match", 1.5),
    Game("robot_arena", "Robot Arena", 1.4),
    Game("hidden_objects_manor", "Hidden Objects Manor", 1.3),
    Game("solitaire_journey", "Solitaire Journey", 1.2),
    Game("skyline_parkour", "Skyline Parkour", 1.1),
    Game("chef_rush", "Chef Rush", 1.0),
    Game("pirate_plunder", "Pirate Plunder", 0.9),
    Game("idle_empire", "Idle Empire", 0.8),
    Game("golf_masters", "Golf Masters", 0.7),
    Game("trivia_titans", "Trivia Titans", 0.6),
    Game("fishing_frontier", "Fishing Frontier", 0.5),
    Game("snake_evolution", "Snake Evolution", 0.4),
)

GAMES_FILE_VARIABLE = "GAMING_PIPELINE_GAMES"


def load_games(path: str | Path) -> tuple[Game, ...]:
    """A studio's games registry from its TOML file; any fault is named with the file."""
    try:
        entries = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("game")
        if not isinstance(entries, list) or not entries:
            raise ValueError("it lists no games: give each one a [[game]] table")
        games = []
        for number, entry in enumerate(entries, 1):
            unknown = set(entry) - {"keyword", "app_name", "popularity"}
            if unknown or not {"keyword", "app_name"} <= set(entry):
                raise ValueError(
                    f"game {number} needs `keyword` and `app_name` (and may have `popularity`), "
                    f"it has {sorted(entry)}"
                )
            games.append(
                Game(str(entry["keyword"]), str(entry["app_name"]), float(entry.get("popularity", 1.0)))
            )
        return _registry(games)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{GAMES_FILE_VARIABLE}={path}: {error}") from error


def _registry(games: list[Game] | tuple[Game, ...]) -> tuple[Game, ...]:
    keywords = [game.keyword for game in games]
    twice = sorted({keyword for keyword in keywords if keywords.count(keyword) > 1})
    if twice:
        raise ValueError(f"the games registry lists {', '.join(twice)} more than once")
    return tuple(games)


GAMES: tuple[Game, ...] = (
    load_games(os.environ[GAMES_FILE_VARIABLE])
    if os.environ.get(GAMES_FILE_VARIABLE)
    else _registry(DEFAULT_GAMES)
)
GAMES_BY_KEYWORD: dict[str, Game] = {game.keyword: game for game in GAMES}
