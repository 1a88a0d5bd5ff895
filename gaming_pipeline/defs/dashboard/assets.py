"""The KPI dashboard: one HTML page of the portfolio's charts, refreshed after the KPI tables."""

from datetime import UTC, datetime

import dagster as dg
from pyspark.sql import DataFrame, SparkSession

from gaming_pipeline.defs.pools import REFRESH_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.lib import charts
from gaming_pipeline.lib.files import write_bytes
from gaming_pipeline.lib.warehouse import is_delta_table, table_path

DASHBOARD_FILE = "_dashboards/kpi_dashboard.html"
# Its own group: the daily refresh job takes the partitioned games and kpis groups whole.
DASHBOARD_GROUP = "dashboards"

# The KPI tables are daily partitions back to 2024-01-01, most of them never materialized:
# eager()'s "no dependency missing" would hold the page back for ever, so it is left out.
# A run that finds a KPI table missing altogether fails and names it.
REFRESH_AFTER_KPIS = (
    dg.AutomationCondition.eager()
    .without(~dg.AutomationCondition.any_deps_missing())
    .with_label("after any day of the KPI tables changes")
)


def charted_tables(spark: SparkSession, warehouse: str) -> dict[str, DataFrame]:
    """The KPI tables the dashboard charts, by name; raises a dg.Failure naming those not written yet."""
    paths = {name: table_path(warehouse, name) for name in charts.CHARTS}
    missing = [name for name, path in paths.items() if not is_delta_table(spark, path)]
    if missing:
        raise dg.Failure(
            description=f"The dashboard charts {', '.join(missing)}, which the warehouse does not hold "
            "yet: materialize those KPI tables (some days of them) first, then the dashboard.",
            metadata={"missing_tables": missing, "warehouse": warehouse},
        )
    return {name: spark.read.format("delta").load(path) for name, path in paths.items()}


@dg.asset(
    group_name=DASHBOARD_GROUP,
    kinds={"spark", "html"},
    deps=list(charts.CHARTS),
    pool=REFRESH_POOL,
    automation_condition=REFRESH_AFTER_KPIS,
)
def kpi_dashboard(warehouse: WarehouseResource, pyspark: SparkResource) -> dg.MaterializeResult:
    """One web page with the portfolio's KPIs, all games together, in UTC: events per hour
    and bookings per hour over the last two days; daily active users, DAU / WAU / MAU,
    retention at day 1, 7 and 30 and cohort revenue per player by day 1, 7 and 30 over the
    last 30. The days shown end on the last day with data. It refreshes itself after any day
    of the KPI tables it charts is rewritten. Open the file at `dagster/uri` in a browser (it needs no network), or see
    the charts right here in the materialization's `preview`."""
    spark = pyspark.spark_session
    tables = charted_tables(spark, warehouse.root)
    latest_days = [day for day in map(charts.latest_day, tables.values()) if day is not None]
    if not latest_days:
        raise dg.Failure(
            description="The KPI tables hold no rows yet: materialize some days of them first.",
            metadata={"tables": list(tables)},
        )
    last_day = max(latest_days)
    pngs = {name: charts.kpi_chart(name, table, last_day) for name, table in tables.items()}
    page = charts.dashboard_page(pngs, last_day, datetime.now(UTC)).encode()
    uri = table_path(warehouse.root, DASHBOARD_FILE)
    write_bytes(uri, page)
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": uri,
            "bytes": len(page),
            "last_day": last_day.isoformat(),
            "preview": dg.MetadataValue.md(
                "\n\n".join(charts.as_markdown(png, charts.CHARTS[name].title) for name, png in pngs.items())
            ),
        }
    )


# Declarative automation runs only under an automation sensor; the one Dagster would add by
# itself starts stopped, and this page should follow the tables from the first start.
kpi_dashboard_automation = dg.AutomationConditionSensorDefinition(
    "kpi_dashboard_automation",
    target=[kpi_dashboard],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes kpi_dashboard after the KPI tables it charts change.",
)
