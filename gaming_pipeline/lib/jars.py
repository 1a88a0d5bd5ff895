"""The pinned Maven jars Spark needs beyond what pyspark ships: Delta and s3a.

They are fetched once, by Spark's own Ivy, into a cache outside the project (shared by every
clone on the machine); runs then list the cached files in `spark.jars`, so a run never
resolves or downloads anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pyspark

# delta-spark_4.2 is built for Spark 4.2 and must match the delta-spark Python package;
# hadoop-aws must match the Hadoop client pyspark 4.2.0 bundles (3.5.0).
PACKAGES = (
    "io.delta:delta-spark_4.2_2.13:4.4.0",
    "org.apache.hadoop:hadoop-aws:3.5.0",
)

_PACKAGES_ID = hashlib.sha256(",".join(PACKAGES).encode()).hexdigest()[:12]
# Ivy names a resolved jar <group>_<artifact>-<version>.jar; pyspark names its own
# <artifact>-<version>.jar. The artifact part is what tells a duplicate.
_IVY_JAR = re.compile(r"^[^_]+_(?P<artifact>.+?)-\d[^-]*(?:-[^-]+)?\.jar$")
_SPARK_JAR = re.compile(r"^(?P<artifact>.+?)-\d.*\.jar$")


class JarsMissing(RuntimeError):
    pass


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gaming_pipeline" / f"jars-{_PACKAGES_ID}"


def _manifest() -> Path:
    return cache_dir() / "manifest.txt"


def _artifact(name: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.match(name)
    return match.group("artifact") if match else None


def select_jars(resolved: list[str], shipped: list[str]) -> list[str]:
    """The resolved jars Spark lacks: Ivy pulls in older Jackson, Parquet, Hadoop client and
    log4j with Delta and hadoop-aws; pyspark's own versions of those must win."""
    have = {_artifact(name, _SPARK_JAR) for name in shipped}
    return sorted(name for name in resolved if _artifact(name, _IVY_JAR) not in have)


def runtime_jars() -> list[str]:
    manifest = _manifest()
    if not manifest.exists():
        raise JarsMissing(
            f"Spark's Delta and s3a jars are not in {cache_dir()}: run `make setup` "
            "(or `gaming-pipeline fetch-jars`) once, with access to Maven Central."
        )
    jars = [str(cache_dir() / "ivy" / "jars" / name) for name in manifest.read_text().split()]
    missing = [jar for jar in jars if not Path(jar).exists()]
    if missing:
        raise JarsMissing(f"cached jars are gone ({missing[0]} ...): run `make setup` again")
    return jars


_FETCH_SCRIPT = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").appName("gaming-pipeline-fetch-jars")
         .config("spark.jars.packages", sys.argv[1]).config("spark.jars.ivy", sys.argv[2])
         .config("spark.ui.enabled", "false").getOrCreate())
spark.stop()
"""


def fetch(progress=print) -> list[str]:
    """Resolve PACKAGES with Spark's Ivy into the cache (a no-op when already there)."""
    try:
        return runtime_jars()
    except JarsMissing:
        pass
    ivy = cache_dir() / "ivy"
    progress(f"fetching {', '.join(PACKAGES)} into {ivy} (once)")
    # A separate interpreter: the JVM that resolves must not be the one a caller keeps.
    subprocess.run([sys.executable, "-c", _FETCH_SCRIPT, ",".join(PACKAGES), str(ivy)], check=True)
    resolved = [path.name for path in (ivy / "jars").glob("*.jar")]
    shipped = [path.name for path in (Path(pyspark.__file__).parent / "jars").glob("*.jar")]
    _manifest().write_text("\n".join(select_jars(resolved, shipped)) + "\n")
    return runtime_jars()
