"""The pinned Maven jars Spark needs beyond what pyspark ships: Delta and s3a; and our
DynamoDB log store for Delta, compiled from its source next to them.

They are fetched once, by Spark's own Ivy, into a cache outside the project (shared by every
clone on the machine); runs then list the cached files in `spark.jars`, so a run never
resolves or downloads anything.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyspark

# delta-spark_4.2 is built for Spark 4.2 and must match the delta-spark Python package;
# hadoop-aws must match the Hadoop client pyspark 4.2.0 bundles (3.5.0).
PACKAGES = (
    "io.delta:delta-spark_4.2_2.13:4.4.0",
    "org.apache.hadoop:hadoop-aws:3.5.0",
)

# Delta's own DynamoDB log store (io.delta:delta-storage-s3-dynamodb) is not served by every
# Maven mirror; ours is built from this source with the JDK's javac (see its class comment).
LOG_STORE_SOURCE = Path(__file__).parent.parent / "jvm" / "DynamoDBLogStore.java"
LOG_STORE_CLASS = "gaming_pipeline.delta.DynamoDBLogStore"
LOG_STORE_JAR = "gaming-pipeline-delta-logstore.jar"

# Ivy names a resolved jar <group>_<artifact>-<version>.jar; pyspark names its own
# <artifact>-<version>.jar. The artifact part is what tells a duplicate.
_IVY_JAR = re.compile(r"^[^_]+_(?P<artifact>.+?)-\d[^-]*(?:-[^-]+)?\.jar$")
_SPARK_JAR = re.compile(r"^(?P<artifact>.+?)-\d.*\.jar$")


class JarsMissing(RuntimeError):
    pass


@functools.cache
def _packages_id() -> str:
    """A new package pin or a change to the log store's source makes a new cache. Read when
    a run or fetch-jars first needs the cache, not when the definitions load."""
    return hashlib.sha256(",".join(PACKAGES).encode() + LOG_STORE_SOURCE.read_bytes()).hexdigest()[:12]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gaming_pipeline" / f"jars-{_packages_id()}"


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
    cache_dir().mkdir(parents=True, exist_ok=True)
    # Two clones set up at once share the cache: Ivy resolving into one folder twice at the
    # same time fails a download ("download failed: ...!delta-kernel-api.jar"), so one
    # waits for the other and then finds the jars there.
    with open(cache_dir() / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return runtime_jars()
        except JarsMissing:
            return _resolve(progress)


def _resolve(progress) -> list[str]:
    ivy = cache_dir() / "ivy"
    progress(f"fetching {', '.join(PACKAGES)} into {ivy} (once)")
    # A separate interpreter: the JVM that resolves must not be the one a caller keeps.
    subprocess.run([sys.executable, "-c", _FETCH_SCRIPT, ",".join(PACKAGES), str(ivy)], check=True)
    resolved = [path.name for path in (ivy / "jars").glob("*.jar")]
    shipped_dir = Path(pyspark.__file__).parent / "jars"
    shipped = [path.name for path in shipped_dir.glob("*.jar")]
    selected = select_jars(resolved, shipped)
    if shutil.which("javac"):
        _build_log_store(ivy / "jars", shipped_dir)
        selected.append(LOG_STORE_JAR)
    else:
        progress(
            "javac not found: the DynamoDB log store for several writers "
            "(GAMING_PIPELINE_DELTA_COMMIT_TABLE) is not built; install a JDK 17 and run "
            "`make setup` again to use it"
        )
    _manifest().write_text("\n".join(selected) + "\n")
    return runtime_jars()


def _build_log_store(jars_dir: Path, shipped_dir: Path) -> None:
    """Compile the log store against the very jars a driver loads, into jars_dir."""
    classpath = [
        *jars_dir.glob("io.delta_delta-storage-*.jar"),
        *jars_dir.glob("software.amazon.awssdk_bundle-*.jar"),
        *shipped_dir.glob("hadoop-client-api-*.jar"),
        *shipped_dir.glob("slf4j-api-*.jar"),
    ]
    with tempfile.TemporaryDirectory() as classes:
        subprocess.run(
            [
                "javac",
                "--release",
                "17",
                "-d",
                classes,
                "-cp",
                os.pathsep.join(map(str, classpath)),
                str(LOG_STORE_SOURCE),
            ],
            check=True,
        )
        with zipfile.ZipFile(jars_dir / LOG_STORE_JAR, "w") as jar:
            for compiled in Path(classes).rglob("*.class"):
                jar.write(compiled, compiled.relative_to(classes).as_posix())


def require_log_store(jars: list[str]) -> None:
    """Fail with the remedy when the DynamoDB log store is configured but is not among the
    cached `jars` (runtime_jars()): it was not built."""
    if not any(Path(jar).name == LOG_STORE_JAR for jar in jars):
        raise JarsMissing(
            "GAMING_PIPELINE_DELTA_COMMIT_TABLE is set but the DynamoDB log store was not "
            f"built into {cache_dir()} (no javac then): install a JDK 17, delete that folder "
            "and run `make setup` again"
        )
