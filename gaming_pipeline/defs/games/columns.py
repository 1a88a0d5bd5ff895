"""A per-game table's columns as the Dagster UI shows them: the raw table's, then the game's
own parameters from its event catalog. Every materialization records the table's columns,
and names those it added since the one before: the asset's history says what changed, when."""

import dagster as dg
from pyspark.sql import types as T

from gaming_pipeline.games import Game
from gaming_pipeline.lib.tables import game_table

COLUMN_SCHEMA = "dagster/column_schema"
# A parameter the catalog no longer declares keeps its column (and its older values).
DROPPED = "no longer in the game's catalog: kept, null in newer rows"


def declared_columns(game: Game) -> list[dg.TableColumn]:
    """The table's columns as the game's catalog declares them, each parameter described by
    its type and the events that send it."""
    sent_by = {
        param.name: [spec.name for spec in game.events.values() if spec.param(param.name)]
        for param in game.columns
    }
    return [
        dg.TableColumn(
            field.name,
            field.dataType.simpleString(),
            f"the game's own parameter, sent with {', '.join(sent_by[field.name])}"
            if field.name in sent_by
            else None,
        )
        for field in game_table(game).schema.fields
    ]


def column_schema(game: Game) -> dg.TableSchema:
    return dg.TableSchema(declared_columns(game))


def materialized_columns(instance: dg.DagsterInstance, game: Game, table: T.StructType | None = None) -> dict:
    """What a materialization of the game's table says of its columns: all of them (`table`,
    its schema as written; else the catalog's and those an earlier materialization recorded,
    since a column is never dropped), and `columns_added` since the last materialization."""
    last = instance.get_latest_materialization_event(dg.AssetKey(game.table_name))
    recorded = (
        last.asset_materialization.metadata.get(COLUMN_SCHEMA)
        if last and last.asset_materialization
        else None
    )
    before = {column.name: column for column in recorded.schema.columns} if recorded else {}
    declared = {column.name: column for column in declared_columns(game)}
    if table is not None:
        names = table.names
        types = {field.name: field.dataType.simpleString() for field in table.fields}
    else:
        names = [*declared, *(name for name in before if name not in declared)]
        types = {name: (declared.get(name) or before[name]).type for name in names}
    columns = [
        dg.TableColumn(name, types[name], declared[name].description if name in declared else DROPPED)
        for name in names
    ]
    added = [name for name in names if before and name not in before]
    return {COLUMN_SCHEMA: dg.TableSchema(columns), **({"columns_added": ", ".join(added)} if added else {})}
