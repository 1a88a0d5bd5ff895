"""Resources shared by every domain, configured from the environment (lib/settings.py names
the variables).

A variable that is set reaches Dagster as an EnvVar, so the UI shows where a value came
from without showing the value; one that is unset falls back to its embedded default.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.settings import VARIABLES, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from gaming_pipeline.lib.pii import PiiVault
    from gaming_pipeline.lib.pseudonyms import ErasedPlayers


class LandingBucketResource(dg.ConfigurableResource):
    """The S3 bucket game events land in, and the SQS queue its notifications reach."""

    bucket: str
    queue_url: str = ""

    def s3(self):
        return aws.client("s3")

    def sqs(self):
        return aws.client("sqs")

    def kinesis(self):
        # Standard retries back off on ProvisionedThroughputExceeded, which a shard answers
        # once its readers together pass five reads a second; few of them, so that a busy
        # shard is left for the next tick rather than hold a tick near Dagster's 60 s limit.
        from botocore.config import Config

        return aws.client(
            "kinesis",
            Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=10, connect_timeout=5),
        )

    def resolved_queue_url(self) -> str:
        return aws.queue_url(self.queue_url)


class WarehouseResource(dg.ConfigurableResource):
    """The root under which every Delta table lives (a path or s3a://bucket/prefix)."""

    root: str


class AlertWebhookResource(dg.ConfigurableResource):
    """Where alerts go: a Slack-compatible incoming-webhook URL. Empty: to the sensor's log only."""

    url: str = ""
    timeout_seconds: float = 10

    def post(self, message: dict) -> None:
        # Only the alerts sensor posts: the runs that load this module skip importing requests.
        import requests

        response = requests.post(self.url, json=message, timeout=self.timeout_seconds)
        response.raise_for_status()


class PiiVaultResource(dg.ConfigurableResource):
    """The PII vault: players' PII, encrypted per player, in its own bucket (lib/pii.py),
    with its keys in KMS, or under a local master key where `key_source` is "local"."""

    bucket: str
    # Empty: as configured (lib/settings.py).
    key_source: str = ""
    kms_key: str = ""
    mac_key: str = ""
    master_key: str = ""

    def _vault(self) -> PiiVault:
        # Only the runs that use the vault load cryptography.
        from gaming_pipeline.lib.pii import PiiVault, keys_from

        configured = Settings.from_env()
        settings = dataclasses.replace(
            configured,
            pii_keys=self.key_source or configured.pii_keys,
            pii_kms_key=self.kms_key or configured.pii_kms_key,
            pii_mac_key=self.mac_key or configured.pii_mac_key,
            pii_master_key=self.master_key or configured.pii_master_key,
        )
        return PiiVault(aws.client("s3"), self.bucket, keys_from(settings))

    def vault(self) -> PiiVault:
        vault = self._vault()
        aws.ensure_bucket(vault.s3, self.bucket)
        return vault

    def erased_players(self) -> ErasedPlayers:
        """The erased-players list, which ingestion leaves out (read-only: no bucket made)."""
        return self._vault().erased()


class SparkResource(dg.ConfigurableResource):
    """The run's one Spark session, shared by its steps: a client of the Spark Connect server
    at `master` (`sc://host:port`), or a driver of its own on a Spark master URL. It starts when
    a step first asks for it, so a run that finds nothing to do never starts a JVM, and it is
    configured then (lib/spark.py): loading the definitions needs neither Spark nor the jars."""

    # Empty: as configured (lib/settings.py), or a session the process already has.
    master: str = ""
    _session: SparkSession | None = PrivateAttr(default=None)

    @property
    def spark_session(self) -> SparkSession:
        if self._session is None:
            from gaming_pipeline.lib.spark import start_session

            configured = Settings.from_env()
            self._session = start_session(
                dataclasses.replace(configured, spark_master=self.master or configured.spark_master)
            )
        return self._session


@dg.definitions
def resources() -> dg.Definitions:
    settings = Settings.from_env()

    def setting(name: str):
        variable = VARIABLES[name]
        return dg.EnvVar(variable) if os.environ.get(variable) else getattr(settings, name)

    return dg.Definitions(
        resources={
            "landing": LandingBucketResource(
                bucket=setting("landing_bucket"), queue_url=setting("queue_url")
            ),
            "warehouse": WarehouseResource(root=setting("warehouse")),
            "alert_webhook": AlertWebhookResource(url=setting("alert_webhook")),
            "pii_vault": PiiVaultResource(
                bucket=setting("pii_bucket"),
                key_source=setting("pii_keys"),
                kms_key=setting("pii_kms_key"),
                mac_key=setting("pii_mac_key"),
                master_key=setting("pii_master_key"),
            ),
            "pyspark": SparkResource(master=setting("spark_master")),
        }
    )
