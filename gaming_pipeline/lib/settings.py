"""Configuration from the environment, each with an embedded default (CONTRACT.md section 5).

With nothing set, everything lives under ~/.gaming_pipeline and AWS calls go wherever boto3's
own configuration points (`AWS_ENDPOINT_URL` for the local endpoint, real AWS otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LANDING_BUCKET = "gaming-pipeline-landing"
DEFAULT_QUEUE_NAME = "gaming-pipeline-landing-events"
DEFAULT_SPARK_MASTER = "local[*]"

ENV_VARS = (
    "GAMING_PIPELINE_HOME",
    "GAMING_PIPELINE_WAREHOUSE",
    "GAMING_PIPELINE_LANDING_BUCKET",
    "GAMING_PIPELINE_QUEUE_URL",
    "GAMING_PIPELINE_SPARK_MASTER",
    "GAMING_PIPELINE_ALERT_WEBHOOK",
)


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse: str
    landing_bucket: str
    # Empty means: look the queue up by its default name when first needed.
    queue_url: str
    spark_master: str
    # Empty means: alerts go to the sensor's log only.
    alert_webhook: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("GAMING_PIPELINE_HOME") or Path.home() / ".gaming_pipeline").expanduser()
        return cls(
            home=home,
            warehouse=env.get("GAMING_PIPELINE_WAREHOUSE") or str(home / "warehouse"),
            landing_bucket=env.get("GAMING_PIPELINE_LANDING_BUCKET") or DEFAULT_LANDING_BUCKET,
            queue_url=env.get("GAMING_PIPELINE_QUEUE_URL", ""),
            spark_master=env.get("GAMING_PIPELINE_SPARK_MASTER") or DEFAULT_SPARK_MASTER,
            alert_webhook=env.get("GAMING_PIPELINE_ALERT_WEBHOOK", ""),
        )
