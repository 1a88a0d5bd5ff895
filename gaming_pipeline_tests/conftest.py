"""Shared fixtures: one local AWS endpoint and one Spark session for the whole test session."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

# A suite started with SIGINT ignored (nohup, a shell's background job) must run as any other:
# Dagster's in-process runs give SIGTERM whatever handler SIGINT has when they end
# (dagster._utils.interrupts), so this process would come to ignore SIGTERM and pass that on
# to what it starts (Dagster's own `tail` of a step's logs would not stop). Ctrl-C here means
# what it means to Python; what the tests launch gets default handling (processes.start).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

# Before anything imports the registry: the tests' own four games (games.toml), inherited by
# every process they start. The default 30 are tested in test_games_registry.py.
os.environ["GAMING_PIPELINE_GAMES"] = str(Path(__file__).with_name("games.toml"))
# Tests land objects and wait for them: a trickle's batch interval would only make them wait.
# The interval itself is tested in test_sensor_backpressure.py.
os.environ["GAMING_PIPELINE_BATCH_INTERVAL_SECONDS"] = "0"

from gaming_pipeline.lib import aws  # noqa: E402
from gaming_pipeline.lib.settings import Settings  # noqa: E402
from gaming_pipeline.local import processes  # noqa: E402
from gaming_pipeline.local.endpoint import LocalAws  # noqa: E402
from gaming_pipeline_tests.service_helpers import IngestService  # noqa: E402


@pytest.fixture(scope="session")
def local_aws():
    """moto's server on a free 127.0.0.1 port, reached over real HTTP by boto3 and s3a."""
    server = LocalAws().start()
    with pytest.MonkeyPatch.context() as environment:
        for key, value in server.environment().items():
            environment.setenv(key, value)
        yield server
    server.stop()


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def spark_server(local_aws, session_home):
    """One Spark Connect server for the test run (s3a pointed at the local endpoint): the
    daemon's runs attach to it, as the demo's do, instead of starting a JVM each."""
    # Under the session's home, where test_pii_isolation scans it.
    log = session_home / "logs" / "spark-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server, address = processes.start_spark_server(
        {**os.environ, "GAMING_PIPELINE_HOME": str(session_home)}, log
    )
    try:
        processes.wait_until_serving(address, 180, server, log)
        yield address
    finally:
        processes.stop([server])


@pytest.fixture(scope="session")
def spark(request, local_aws, session_home):
    """The one Spark session of the test run (s3a pointed at the local endpoint): a client
    of spark_server, as the demo's runs are, so that a test process (an xdist worker) warms
    one JVM, not two; or with GAMING_PIPELINE_TEST_SPARK=local a driver in this process."""
    from gaming_pipeline.lib.spark import start_session

    environ = {"GAMING_PIPELINE_HOME": str(session_home)}
    over_connect = os.environ.get("GAMING_PIPELINE_TEST_SPARK") != "local"
    with pytest.MonkeyPatch.context() as environment:
        if over_connect:
            address = request.getfixturevalue("spark_server")
            environ["GAMING_PIPELINE_SPARK_MASTER"] = address
            # Resources built with an empty spark_config, and the CLI, find the server too.
            environment.setenv("SPARK_REMOTE", address)
            environment.setenv("GAMING_PIPELINE_SPARK_MASTER", address)
        session = start_session(Settings.from_env(environ))
        if not over_connect:
            session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


@pytest.fixture
def landing(local_aws):
    """A freshly provisioned landing path (bucket, topic, queue, dead-letter queue) per test."""
    name = f"landing-{uuid.uuid4().hex[:10]}"
    return aws.provision(name, queue_name=name)


@pytest.fixture
def service(local_aws, landing, tmp_path):
    """The real ingest service on the test's landing bucket, stopped after the test."""
    running = IngestService(tmp_path / "home", landing.bucket).start()
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture
def warehouse(tmp_path) -> str:
    return str(tmp_path / "warehouse")


# What a test needs decides its tier, so a new test is tiered without anyone remembering to.
SPARK_FIXTURES = {"spark", "spark_server"}
PROCESS_FIXTURES = {"local_aws"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(items):
    for item in items:
        needs = set(item.fixturenames)
        if needs & SPARK_FIXTURES:
            item.add_marker(pytest.mark.spark)
        if needs & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if not any(item.get_closest_marker(name) for name in ("spark", "e2e")):
            item.add_marker(pytest.mark.unit)
    # The longest first, the shortest last: with two workers (`make test`), whichever ends
    # its long modules first takes the short ones, and neither waits alone on a long one.
    items.sort(key=lambda item: [not item.get_closest_marker(tier) for tier in ("slow", "spark", "e2e")])
