"""The event catalog: the events each game sends and their own parameters, with types.

It lives in the games registry's TOML file (games.py): `[events.<name>]` tables declare
events every game of the file sends, `[game.events.<name>]` tables under a `[[game]]` declare
one game's own (or add parameters to a shared or seed event). Each declares `params.<name>`,
a type name (an optional parameter) or `{ type = "...", required = true }`, and may be
`open = true` to keep parameters it does not declare instead of refusing them. Every game
also has the seed's six events, whose fields are the `eventParams` struct.

Parameters arrive inside `eventParams` beside the seed's fields; they are kept in the raw
table's `customParams` VARIANT and become typed columns of the game's table. A fault is
reported with its line, game, event and parameter, all faults of a file at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gaming_pipeline.event_names import ITEM, LEVEL, PROGRESSION, PURCHASE, SEED_EVENTS, SEED_PARAMS

# A parameter's types (lib/events.PARAM_TYPES gives each its Spark type).
TYPES = ("string", "integer", "float", "boolean", "timestamp", "money")
EVENT_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
# A timestamp parameter is written as clients write client_event_time: ISO-8601 with a zone.
ISO_INSTANT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
# The largest money value in either direction (and a purchase's largest `amount`).
MAX_MONEY = 1_000_000.0
MAX_TEXT = 1024
PARAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Firebase's limit: enough for a game's own, few enough to keep a line and a table narrow.
MAX_PARAMS = 25
# Columns of the per-game tables besides the parameters (lib/events.RAW_SCHEMA): a
# parameter may not take their names (Delta column names ignore case).
RESERVED_COLUMNS = (
    "event_id",
    "eventName",
    "eventTime",
    "eventParams",
    "customParams",
    "eventDate",
    "_source_object",
    "_source_modified_at",
    "_ingested_at",
    "_ingest_run_id",
)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool = False


@dataclass(frozen=True)
class EventSpec:
    """One event of a game's catalog: its own parameters (beyond the seed's fields), and
    whether parameters it does not declare are kept (`open`) or refused."""

    name: str
    params: tuple[Param, ...] = ()
    open: bool = False

    def param(self, name: str) -> Param | None:
        return next((param for param in self.params if param.name == name), None)

    @property
    def checked(self) -> bool:
        """Whether events of this entry carry parameters of their own to check and keep."""
        return bool(self.params) or self.open


SEED_CATALOG: dict[str, EventSpec] = {name: EventSpec(name) for name in SEED_EVENTS}


class CatalogError(ValueError):
    """A catalog's faults, each as `line N: game G, event E, parameter P: what is wrong`."""

    def __init__(self, faults: list[str]):
        super().__init__("; ".join(faults) if len(faults) > 1 else faults[0])
        self.faults = faults


@dataclass(frozen=True)
class _Place:
    """Where in the file a declaration is: game None for the shared `[events]`."""

    game: str | None = None
    event: str | None = None
    param: str | None = None

    def named(self) -> str:
        parts = [f"game {self.game}" if self.game else "shared events" if self.event else ""]
        parts += [
            f"event {self.event}" if self.event else "",
            f"parameter {self.param}" if self.param else "",
        ]
        return ", ".join(part for part in parts if part)


class _Lines:
    """Finds the line of a declaration in the TOML text: tomllib gives values, not lines."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")

    def __init__(self, text: str):
        self.entries: list[tuple[int, int, tuple[str, ...]]] = []
        games, header = 0, ()
        for number, line in enumerate(text.splitlines(), 1):
            if found := self._HEADER.match(line):
                header = tuple(part.strip().strip("\"'") for part in found[1].split("."))
                games += header == ("game",) and line.lstrip().startswith("[[")
                self.entries.append((number, games, header))
            elif found := self._KEY.match(line):
                key = tuple(part.strip().strip("\"'") for part in found[1].split("."))
                # An inline table's keys are on its line: `params = { level = "integer" }`.
                inline = tuple(re.findall(r"([A-Za-z0-9_]+)\s*=", line[found.end() :]))
                self.entries.append((number, games, header + key + inline))

    def of(self, game_number: int | None, place: _Place) -> int | None:
        scope = ("game", "events") if game_number else ("events",)
        wanted = [scope + (place.event,) if place.event else ("game",)]
        if place.param:
            wanted.insert(0, (*scope, place.event, "params", place.param))
        for path in wanted:
            for number, games, found in self.entries:
                # Shared `[events]` tables are top-level wherever they stand; a game's, under it.
                in_game = games == game_number if game_number else True
                if in_game and _declares(found, path):
                    return number
        return None


def _declares(found: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether a line's path (its table's header and its key) declares `path`: begins with
    it, or for a parameter, names it among an inline table's keys (`params = { a = .., b = .. }`)."""
    if path == ("game",):
        return found == ("game",)
    if found[: len(path)] == path:
        return True
    return (
        len(path) > 2
        and path[-2] == "params"
        and found[: len(path) - 1] == path[:-1]
        and path[-1] in found[len(path) - 1 :]
    )


class _Faults:
    def __init__(self, text: str):
        self.lines = _Lines(text)
        self.at: list[tuple[int, str]] = []

    def add(self, game_number: int | None, place: _Place, message: str) -> None:
        line = self.lines.of(game_number, place)
        where = ", ".join(part for part in (f"line {line}" if line else "", place.named()) if part)
        fault = (line or 0, f"{where}: {message}" if where else message)
        # A shared event's fault shows once, not once for each game that has the event.
        if fault not in self.at:
            self.at.append(fault)

    @property
    def found(self) -> list[str]:
        """The faults in the order of their lines."""
        return [fault for _, fault in sorted(self.at, key=lambda at: at[0])]


def _param(value: Any) -> tuple[str, bool] | str:
    """A declared parameter's (type, required), or why it is not one."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or set(value) - {"type", "required"} or "type" not in value:
        return 'give a type name, or { type = "...", required = true }'
    if value["type"] not in TYPES:
        return f"type {value['type']!r} is none of {', '.join(TYPES)}"
    if not isinstance(value.get("required", False), bool):
        return "`required` is true or false"
    return value["type"], value.get("required", False)


def _entries(
    declared: Any, game_number: int | None, game: str | None, faults: _Faults
) -> dict[str, EventSpec]:
    """An `events` table's entries, each checked on its own."""
    if not isinstance(declared, dict):
        faults.add(game_number, _Place(game), "`events` is a table of event names")
        return {}
    entries = {}
    for name, entry in declared.items():
        place = _Place(game, name)
        if not re.fullmatch(EVENT_NAME, name):
            faults.add(game_number, place, "an event name is a letter then letters, digits or _, 64 at most")
            continue
        if not isinstance(entry, dict) or set(entry) - {"params", "open"}:
            faults.add(game_number, place, "an event has `params` and may be `open = true`, nothing else")
            continue
        if not isinstance(entry.get("params", {}), dict) or not isinstance(entry.get("open", False), bool):
            faults.add(game_number, place, "`params` is a table of parameters, `open` true or false")
            continue
        params = []
        for param_name, value in entry.get("params", {}).items():
            where = _Place(game, name, param_name)
            typed = _param(value)
            if isinstance(typed, str):
                faults.add(game_number, where, typed)
            elif not PARAM_NAME.fullmatch(param_name):
                faults.add(game_number, where, "a parameter name is a letter then letters, digits or _")
            elif param_name in SEED_PARAMS or param_name.lower() in {c.lower() for c in RESERVED_COLUMNS}:
                faults.add(game_number, where, "the name is the seed's own field or a table column")
            else:
                params.append(Param(param_name, *typed))
        if len(params) > MAX_PARAMS:
            faults.add(game_number, place, f"{len(params)} parameters: {MAX_PARAMS} at most")
        entries[name] = EventSpec(name, tuple(params), entry.get("open", False))
    return entries


def _merged(base: EventSpec | None, added: EventSpec) -> EventSpec:
    if base is None:
        return added
    params = [added.param(param.name) or param for param in base.params]
    params += [param for param in added.params if base.param(param.name) is None]
    return EventSpec(added.name, tuple(params), base.open or added.open)


def _roles(catalog: dict[str, EventSpec], game_number: int | None, game: str | None, faults: _Faults) -> None:
    """The parameters the pipeline reads itself (event_names.py) have the type it reads."""
    for name, spec in catalog.items():
        wanted = {LEVEL: ("integer", True)} if name in PROGRESSION else {}
        if name == PURCHASE and spec.param(ITEM):
            wanted[ITEM] = ("string", spec.param(ITEM).required)
        for param_name, (kind, required) in wanted.items():
            param = spec.param(param_name)
            if param is None or (param.type, param.required) != (kind, required):
                faults.add(
                    game_number,
                    _Place(game, name, param_name),
                    f"{name} declares {param_name} as a{' required' if required else 'n'} {kind} (the KPIs read it)",
                )


def game_catalogs(document: dict, text: str) -> tuple[dict[str, EventSpec], list[dict[str, EventSpec]]]:
    """The shared catalog (seed and `[events]`) and each `[[game]]`'s, from a parsed registry
    file whose games are tables (games.load_registry checks) and its text; raises
    CatalogError with every fault found."""
    faults = _Faults(text)
    shared = dict(SEED_CATALOG)
    for name, spec in _entries(document.get("events", {}), None, None, faults).items():
        shared[name] = _merged(shared.get(name), spec)
    _roles(shared, None, None, faults)
    per_game = []
    for number, entry in enumerate(document.get("game") or [], 1):
        game = entry.get("keyword")
        catalog = dict(shared)
        own = _entries(entry.get("events", {}), number, game, faults)
        for name, spec in own.items():
            catalog[name] = _merged(catalog.get(name), spec)
            for param in spec.params:
                before = shared.get(name) and shared[name].param(param.name)
                if before and before.type != param.type:
                    faults.add(number, _Place(game, name, param.name), "declared again with another type")
        _roles({name: catalog[name] for name in own}, number, game, faults)
        _one_type_per_column(catalog, number, game, faults)
        per_game.append(catalog)
    if faults.found:
        raise CatalogError(faults.found)
    return shared, per_game


def _one_type_per_column(
    catalog: dict[str, EventSpec], number: int, game: str | None, faults: _Faults
) -> None:
    """A parameter is one column of the game's table: one type across the game's events."""
    seen: dict[str, Param] = {}
    for spec in catalog.values():
        for param in spec.params:
            first = seen.setdefault(param.name.lower(), param)
            if (first.name, first.type) != (param.name, param.type):
                faults.add(
                    number,
                    _Place(game, spec.name, param.name),
                    f"is {param.type} here but {first.name} is {first.type} elsewhere in the game "
                    "(ignoring case): a parameter is one column of the game's table",
                )


def columns(catalog: dict[str, EventSpec]) -> tuple[Param, ...]:
    """A game's parameters as the columns of its table, in the catalog's order."""
    found: dict[str, Param] = {}
    for spec in catalog.values():
        for param in spec.params:
            found.setdefault(param.name, Param(param.name, param.type))
    return tuple(found.values())


# Why an event does not fit its game's catalog, worded once for the ingest service's answers,
# its metrics' labels and the quarantine's reasons alike.
UNKNOWN_EVENT = "is not an event of the game's catalog"
UNDECLARED = ": not declared for "
CATALOG_REQUIRES = "(the game's catalog requires it)"
CATALOG_TYPE = "(the game's catalog)"


def unknown_event(event: str) -> str:
    return f"eventName {event} {UNKNOWN_EVENT}"


def undeclared(event: str, names: str) -> str:
    return f"eventParams {names}{UNDECLARED}{event} in the game's catalog"


def missing(event: str, param: str) -> str:
    return f"{event} needs eventParams.{param} {CATALOG_REQUIRES}"


def wrong_type(param: Param) -> str:
    article = "an" if param.type[0] in "aeiou" else "a"
    return f"eventParams.{param.name} must be {article} {param.type} {CATALOG_TYPE}"
