"""The local AWS endpoint the demo, the tests and the benchmarks run on: moto's server on
127.0.0.1, with the PII vault's KMS keys made at start."""

from __future__ import annotations

import logging
import os
import threading

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


class KinesisTakesTurns:
    """moto's Kinesis is not safe for concurrent calls: a read walks a shard's records while a
    put adds one, and fails with a 500 ("OrderedDict mutated during iteration"), as a stream
    read while it is written always is. Its calls take turns here; S3, SQS and the rest stay
    concurrent."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("Kinesis_"):
            return self.app(environ, start_response)
        with self.lock:
            # The whole answer inside the lock: moto builds it as the body is read.
            return list(self.app(environ, start_response))


def _moto_server(port: int):
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        # ThreadedMotoServer's own, with Kinesis's calls taking turns.
        def _server_entry(self) -> None:
            app = KinesisTakesTurns(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=port, verbose=False)


class LocalAws:
    """moto's server on 127.0.0.1: S3, SNS, SQS, KMS and Kinesis over real HTTP, in this
    process, with the PII vault's KMS keys made at start."""

    def __init__(self, port: int = 0):
        self.port = port or free_port()
        self._server = _moto_server(self.port)

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
