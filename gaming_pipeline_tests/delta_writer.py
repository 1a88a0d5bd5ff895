"""One Spark driver appending batches to a Delta table, configured by the environment alone.

The concurrent-writers test runs two at once on one s3a table:
`python -m gaming_pipeline_tests.delta_writer TABLE WRITER BATCHES SIGNALS`. Writer 0 creates
the table and then the file SIGNALS/created; both start appending once the test has made
SIGNALS/go, so that they race on appends, not on the table's creation.
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
    wait_for(signals / "go")
    for batch in range(batches):
        batch_rows(batch).write.format("delta").mode("append").save(table)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
