"""Configuration from the environment, each with an embedded default (README: Configuration).

With nothing set, everything lives under ~/.gaming_pipeline and AWS calls go wherever boto3's
own configuration points (`AWS_ENDPOINT_URL` for the local endpoint, real AWS otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_LANDING_BUCKET = "gaming-pipeline-landing"
DEFAULT_QUEUE_NAME = "gaming-pipeline-landing-events"
# The stream `gaming-pipeline demo --source kinesis` creates when none is named.
DEFAULT_KINESIS_STREAM = "gaming-pipeline-events"
DEFAULT_SPARK_MASTER = "local[*]"
DEFAULT_PII_BUCKET = "gaming-pipeline-pii"
DEFAULT_PII_KMS_KEY = "alias/gaming-pipeline-pii"
DEFAULT_PII_MAC_KEY = "alias/gaming-pipeline-pseudonyms"
PII_KEY_SOURCES = ("kms", "local")
# Every batch pays a fixed cost whatever its size: an ingestion run (about 35 Delta commits,
# the per-game tables included), a KPI refresh and the dashboard, some 200 CPU-seconds on
# 2 cores. At a trickle, objects wait up to this long to share one batch:
# the demo's 50 events/s then keeps under half of a 2-core machine busy.
DEFAULT_BATCH_INTERVAL_SECONDS = 300
# A game that usually sends events and sent none for this long is an outage: three batch
# intervals, so a quiet batch or two is no incident.
DEFAULT_OUTAGE_SECONDS = 900
# A Kinesis shard whose newest read record is this far behind the stream's newest is an
# alert: the figure Kinesis users watch (GetRecords.IteratorAgeMilliseconds).
DEFAULT_KINESIS_ALERT_AGE_SECONDS = 300


def _choice(variable: str, raw: str, choices: tuple[str, ...]) -> str:
    """The variable's value, one of `choices` (unset or empty: the first)."""
    value = raw or choices[0]
    if value not in choices:
        raise ValueError(f"{variable} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _seconds(variable: str, raw: str, default: float) -> float:
    raw = raw or str(default)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{variable} must be a number of seconds, 0 or more, not {raw!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    """Every setting, each read from its variable in VARIABLES."""

    home: Path
    warehouse: str
    landing_bucket: str
    # Empty means: look the queue up by its default name when first needed.
    queue_url: str
    spark_master: str
    # Empty means: alerts go to the sensor's log only.
    alert_webhook: str
    # PII lives in its own bucket, encrypted (lib/pii.py).
    pii_bucket: str
    # Where the PII keys come from: "kms" (AWS KMS, the default), or "local", the fallback for
    # a machine with no KMS: one master key, which every process that handles PII holds.
    pii_keys: str
    # The KMS key wrapping players' data keys, and the HMAC key pseudonyms derive from.
    pii_kms_key: str
    pii_mac_key: str
    # With "local" keys: base64 of 32 bytes. Empty means: a key generated once into
    # pii-master.key under home.
    pii_master_key: str
    # The ingest service's API keys, hashed (ingest_service/keys.py).
    api_keys_file: Path
    # A DynamoDB table through which several Spark drivers commit to an s3a warehouse safely
    # (lib/jars.py builds the log store). Empty means: one driver writes, Delta's default.
    delta_commit_table: str
    # At a trickle (the last ingestion run took under 2 MB), the least time between the
    # starts of two ingestion runs the queue sensor asks for.
    batch_interval_seconds: float
    # How long a game that usually sends events may send none before alerts_sensor says so
    # (lib/alerts.py silent_games); 0: never.
    outage_seconds: float
    # A Kinesis stream (name or ARN) to read as a second way in (lib/kinesis.py); empty: none.
    kinesis_stream: str
    # A shard this far behind the stream's newest record is an alert.
    kinesis_alert_age_seconds: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def value(name: str) -> str:
            return env.get(VARIABLES[name], "")

        home = Path(value("home") or Path.home() / ".gaming_pipeline").expanduser()
        return cls(
            home=home,
            warehouse=value("warehouse") or str(home / "warehouse"),
            landing_bucket=value("landing_bucket") or DEFAULT_LANDING_BUCKET,
            queue_url=value("queue_url"),
            spark_master=value("spark_master") or DEFAULT_SPARK_MASTER,
            alert_webhook=value("alert_webhook"),
            pii_bucket=value("pii_bucket") or DEFAULT_PII_BUCKET,
            pii_keys=_choice(VARIABLES["pii_keys"], value("pii_keys"), PII_KEY_SOURCES),
            pii_kms_key=value("pii_kms_key") or DEFAULT_PII_KMS_KEY,
            pii_mac_key=value("pii_mac_key") or DEFAULT_PII_MAC_KEY,
            pii_master_key=value("pii_master_key"),
            api_keys_file=Path(value("api_keys_file") or home / "api-keys.json").expanduser(),
            delta_commit_table=value("delta_commit_table"),
            batch_interval_seconds=_seconds(
                VARIABLES["batch_interval_seconds"],
                value("batch_interval_seconds"),
                DEFAULT_BATCH_INTERVAL_SECONDS,
            ),
            outage_seconds=_seconds(
                VARIABLES["outage_seconds"], value("outage_seconds"), DEFAULT_OUTAGE_SECONDS
            ),
            kinesis_stream=value("kinesis_stream").strip(),
            kinesis_alert_age_seconds=_seconds(
                VARIABLES["kinesis_alert_age_seconds"],
                value("kinesis_alert_age_seconds"),
                DEFAULT_KINESIS_ALERT_AGE_SECONDS,
            ),
        )

    @property
    def spark_connect_file(self) -> Path:
        """Where a running demo writes its Spark Connect address, for the CLI to attach to."""
        return self.home / "spark-connect.address"

    @property
    def spool_dir(self) -> Path:
        """Where the ingest service keeps accepted events until they reach S3."""
        return self.home / "spool"

    def __post_init__(self) -> None:
        if self.pii_master_key and self.pii_keys != "local":
            raise ValueError(
                "GAMING_PIPELINE_PII_MASTER_KEY is set, but the PII keys are in KMS: set "
                "GAMING_PIPELINE_PII_KEYS=local to use a local master key instead"
            )

    def resolved_pii_master_key(self) -> str:
        """The configured master key, or the home's own, created on first use and readable
        by its owner only."""
        if self.pii_master_key:
            return self.pii_master_key
        from gaming_pipeline.lib.pii import new_master_key

        key_file = self.home / "pii-master.key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(new_master_key())
        return key_file.read_text().strip()


# Each setting's environment variable, the one place they are named: Settings.from_env reads
# them and the Dagster resources (defs/resources.py) refer to them.
VARIABLES = {
    "home": "GAMING_PIPELINE_HOME",
    "warehouse": "GAMING_PIPELINE_WAREHOUSE",
    "landing_bucket": "GAMING_PIPELINE_LANDING_BUCKET",
    "queue_url": "GAMING_PIPELINE_QUEUE_URL",
    "spark_master": "GAMING_PIPELINE_SPARK_MASTER",
    "alert_webhook": "GAMING_PIPELINE_ALERT_WEBHOOK",
    "pii_bucket": "GAMING_PIPELINE_PII_BUCKET",
    "pii_keys": "GAMING_PIPELINE_PII_KEYS",
    "pii_kms_key": "GAMING_PIPELINE_PII_KMS_KEY",
    "pii_mac_key": "GAMING_PIPELINE_PII_MAC_KEY",
    "pii_master_key": "GAMING_PIPELINE_PII_MASTER_KEY",
    "api_keys_file": "GAMING_PIPELINE_API_KEYS",
    "delta_commit_table": "GAMING_PIPELINE_DELTA_COMMIT_TABLE",
    "batch_interval_seconds": "GAMING_PIPELINE_BATCH_INTERVAL_SECONDS",
    "outage_seconds": "GAMING_PIPELINE_OUTAGE_SECONDS",
    "kinesis_stream": "GAMING_PIPELINE_KINESIS_STREAM",
    "kinesis_alert_age_seconds": "GAMING_PIPELINE_KINESIS_ALERT_AGE_SECONDS",
}
assert set(VARIABLES) == {field.name for field in fields(Settings)}, "a setting without its variable"
