"""The local AWS endpoint the demo, the tests and the benchmarks run on: moto's server on
127.0.0.1, with the PII vault's KMS keys made at start."""

from __future__ import annotations

import logging
import os

from gaming_pipeline.lib.aws import provision_pii_keys
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.local.ports import free_port

# moto's server accepts any credentials; these stand in when none are configured so the
# local endpoint works on a machine that has never seen AWS.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "gaming-pipeline-local",
    "AWS_SECRET_ACCESS_KEY": "gaming-pipeline-local",
    "AWS_REGION": "us-east-1",
}


class LocalAws:
    """moto's server on 127.0.0.1: S3, SNS, SQS and KMS over real HTTP, in this process, with
    the PII vault's KMS keys made at start."""

    def __init__(self, port: int = 0):
        from moto.server import ThreadedMotoServer

        self.port = port or free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this endpoint (credentials kept if already set)."""
        env = {key: os.environ.get(key) or value for key, value in LOCAL_CREDENTIALS.items()}
        env["AWS_ENDPOINT_URL"] = self.endpoint
        return env

    def start(self) -> LocalAws:
        # moto's request log is one line per call: noise next to the pipeline's own output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        import boto3

        settings = Settings.from_env()
        environment = self.environment()
        kms = boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name=environment["AWS_REGION"],
            aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        )
        provision_pii_keys(kms, settings.pii_kms_key, settings.pii_mac_key)
        return self

    def stop(self) -> None:
        self._server.stop()
