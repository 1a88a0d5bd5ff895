"""Shared fixtures: one local AWS endpoint and one Spark session for the whole test session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.settings import Settings


@pytest.fixture(scope="session")
def local_aws():
    """moto's server on a free 127.0.0.1 port, reached over real HTTP by boto3 and s3a."""
    server = aws.LocalAws().start()
    saved = {key: os.environ.get(key) for key in server.environment()}
    os.environ.update(server.environment())
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def spark(local_aws, session_home):
    """The one Spark session of the test run (s3a pointed at the local endpoint)."""
    from gaming_pipeline.lib.spark import start_session

    session = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": str(session_home)}))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def landing(local_aws):
    """A freshly provisioned landing path (bucket, topic, queue, dead-letter queue) per test."""
    name = f"landing-{uuid.uuid4().hex[:10]}"
    return aws.provision(name, queue_name=name)


@pytest.fixture
def warehouse(tmp_path) -> str:
    return str(tmp_path / "warehouse")
