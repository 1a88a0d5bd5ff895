"""The KPI dashboard from ingested history: written after the KPI tables by automation, and
drawn by a real browser with every chart holding data."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from gaming_pipeline.defs.dashboard.assets import DASHBOARD_FILE, kpi_dashboard
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from gaming_pipeline.lib import aws, charts
from gaming_pipeline.lib.files import write_bytes
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator
from gaming_pipeline_tests.ingest_helpers import HISTORY_END, ingest_everything, load_history, resources
from gaming_pipeline_tests.kpi_helpers import colored_pixels

HISTORY_DAYS = 8.0
CHARTED_KPIS = [dg.AssetKey(name) for name in charts.CHARTS]
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_WIDTH_PX, BROWSER_HEIGHT_PX = 1000, charts.chart_box(len(charts.CHARTS))[1] + 40
# A chart with data draws at least a 2-pixel line over a few days; an empty chart, a
# broken image or a misplaced one leaves its box without coloured pixels.
MIN_COLORED_PIXELS = 300


def screenshot(page: Path, workdir: Path) -> Path:
    """A PNG of the page as headless Chromium draws it, offline, at one CSS pixel per pixel."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium package to check the dashboard"
    )
    shot = workdir / "dashboard.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--force-device-scale-factor=1",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        f"--window-size={BROWSER_WIDTH_PX},{BROWSER_HEIGHT_PX}",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.exists(), f"Chromium drew no screenshot:\n{done.stderr[-3000:]}"
    return shot


def assert_charts_drawn(shot: Path) -> None:
    image = Image.open(shot)
    assert image.size == (BROWSER_WIDTH_PX, BROWSER_HEIGHT_PX), image.size
    drawn = {
        name: colored_pixels(image.crop(charts.chart_box(index))) for index, name in enumerate(charts.CHARTS)
    }
    empty = {name: pixels for name, pixels in drawn.items() if pixels < MIN_COLORED_PIXELS}
    assert not empty, (
        f"charts drawn without data (coloured pixels, at least {MIN_COLORED_PIXELS} expected): {empty}; "
        f"screenshot: {shot}"
    )


@pytest.mark.slow
def test_dashboard_follows_the_kpi_tables_and_draws_every_chart_with_data(
    spark, landing, warehouse, tmp_path
):
    load_history(landing.bucket, days=HISTORY_DAYS)
    start, end = generator.history_window(HISTORY_DAYS, HISTORY_END)
    days = [
        (start.date() + timedelta(days=n)).isoformat() for n in range((end.date() - start.date()).days + 1)
    ]
    with dg.instance_for_test() as instance:
        ingest_everything(landing, warehouse, instance)
        graph = dg.Definitions(assets=[kpi_tables, kpi_dashboard], resources=resources(landing, warehouse))
        before = dg.evaluate_automation_conditions(defs=graph, instance=instance)
        assert before.total_requested == 0

        # Only the charted tables: their checks judge the data, which this test does not.
        kpis = dg.materialize(
            [kpi_tables],
            selection=CHARTED_KPIS,
            resources=resources(landing, warehouse),
            instance=instance,
            tags={
                RANGE_START_TAG: days[0],
                RANGE_END_TAG: days[-1],
            },
        )
        assert kpis.success
        after_kpis = dg.evaluate_automation_conditions(defs=graph, instance=instance, cursor=before.cursor)
        assert after_kpis.get_num_requested(kpi_dashboard.key) == 1

        result = dg.materialize([kpi_dashboard], resources=resources(landing, warehouse), instance=instance)
        assert result.success
        settled = dg.evaluate_automation_conditions(defs=graph, instance=instance, cursor=after_kpis.cursor)
        assert settled.total_requested == 0

    metadata = result.asset_materializations_for_node("kpi_dashboard")[0].metadata
    page = Path(table_path(warehouse, DASHBOARD_FILE))
    assert metadata["dagster/uri"].value == str(page)
    assert metadata["bytes"].value == page.stat().st_size
    assert metadata["last_day"].value == days[-1]
    assert metadata["preview"].value.count("](data:image/png;base64,") == len(charts.CHARTS)

    assert_charts_drawn(screenshot(page, tmp_path))


def test_a_missing_kpi_table_fails_the_dashboard_with_its_name(spark, landing, warehouse):
    result = dg.materialize([kpi_dashboard], resources=resources(landing, warehouse), raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    for name in charts.CHARTS:
        assert name in description
    assert "materialize" in description


def test_page_bytes_reach_an_s3a_warehouse_and_replace_the_last(landing):
    uri = f"s3a://{landing.bucket}/warehouse/{DASHBOARD_FILE}"
    write_bytes(uri, b"<p>first</p>")
    write_bytes(uri, b"<p>second</p>")
    body = aws.client("s3").get_object(Bucket=landing.bucket, Key=f"warehouse/{DASHBOARD_FILE}")["Body"]
    assert body.read() == b"<p>second</p>"


def test_page_bytes_replace_a_local_file_whole(tmp_path):
    target = tmp_path / "warehouse" / DASHBOARD_FILE
    write_bytes(str(target), b"<p>first</p>")
    write_bytes(f"file://{target}", b"<p>second</p>")
    assert target.read_bytes() == b"<p>second</p>"
    # Nothing left beside it: the temporary file it was written through is renamed into place.
    assert list(target.parent.iterdir()) == [target]
