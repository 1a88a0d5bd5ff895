"""One Spark driver appending batches to a Delta table, configured by the environment alone.

The concurrent-writers test runs two at once on one s3a table:
`python -m gaming_pipeline_tests.delta_writer TABLE WRITER BATCHES SIGNALS`, where SIGNALS is
a folder the test and the drivers meet in. Writer 0 creates the table (then SIGNALS/created);
once the test has made SIGNALS/claimed, each driver reads the table once, which warms it up
(then SIGNALS/ready-WRITER); both start appending when the test makes SIGNALS/go, so that
they race on appends, at full speed, and not on the table's creation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROWS_PER_BATCH = 10


def wait_for(signal: Path) -> None:
    while not signal.exists():
        time.sleep(0.1)


def main(table: str, writer: int, batches: int, signals: Path) -> None:
    from pyspark.sql import functions as F

    from gaming_pipeline.lib.settings import Settings
    from gaming_pipeline.lib.spark import start_session

    spark = start_session(Settings.from_env())

    def batch_rows(batch: int):
        return (
            spark.range(ROWS_PER_BATCH).withColumn("writer", F.lit(writer)).withColumn("batch", F.lit(batch))
        )

    if writer == 0:
        batch_rows(-1).limit(0).write.format("delta").save(table)
        (signals / "created").touch()
    wait_for(signals / "claimed")
    spark.read.format("delta").load(table).count()
    (signals / f"ready-{writer}").touch()
    wait_for(signals / "go")
    for batch in range(batches):
        # The commit says whose batch it is: the test tells the drivers' commits apart by it.
        (
            batch_rows(batch)
            .write.format("delta")
            .mode("append")
            .option("userMetadata", f"writer {writer} batch {batch}")
            .save(table)
        )
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
