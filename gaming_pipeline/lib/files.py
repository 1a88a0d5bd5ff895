"""Plain files beside the tables, written through Spark's Hadoop filesystems so one call
serves a local warehouse and an `s3a://` one alike."""

from __future__ import annotations

from pyspark.sql import SparkSession


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write `data` to `uri` (a path or any Hadoop filesystem URI), replacing what was there."""
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    filesystem = path.getFileSystem(spark._jsc.hadoopConfiguration())
    # The local filesystem would otherwise leave a hidden .crc file beside the file.
    filesystem.setWriteChecksum(False)
    stream = filesystem.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
