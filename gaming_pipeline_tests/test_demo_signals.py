"""The demo stops every process it started whatever ends it: Ctrl-C, `kill`, the terminal
closed (SIGINT, SIGTERM, SIGHUP: an orderly stop), or kill -9 (its children get SIGTERM
from the kernel, and the next demo clears whatever is left before it starts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaming_pipeline.lib import processes
from gaming_pipeline_tests.service_helpers import wait_until

pytestmark = pytest.mark.e2e

PROC = Path("/proc")
# No Spark Connect server of its own (the slowest start): runs would find nothing there.
NO_SPARK_SERVER = {"GAMING_PIPELINE_SPARK_MASTER": "sc://127.0.0.1:9"}


class Demo:
    """`gaming-pipeline demo` as a user runs it, on its own home and on free ports."""

    def __init__(self, home: Path, environ: dict[str, str] | None = None):
        self.home = home
        self.log = home.parent / f"{home.name}-demo-{time.monotonic_ns()}.log"
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GAMING_PIPELINE_", "AWS_", "DAGSTER_", "SPARK_REMOTE"))
        }
        ports = [f"--{name}-port=0" for name in ("ui", "aws", "ingest", "spark")]
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "gaming-pipeline"), "demo", "--rate", "2", *ports],
                env={**inherited, "GAMING_PIPELINE_HOME": str(home), **(environ or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def wait_until_up(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, f"the demo exited: {self.log.read_text()}"
            return "demo is up" in self.log.read_text()

        wait_until(up, 300, "the demo coming up")

    def processes(self) -> set[str]:
        """Every running process of the demo (itself, its children and theirs): each carries
        its home in its environment. As `pid@start-time`, which a reused pid does not match."""
        marker = f"GAMING_PIPELINE_HOME={self.home}".encode()
        found = set()
        for entry in PROC.iterdir():
            try:
                environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
            except OSError:
                continue
            if marker in environ.split(b"\0") and (identity := processes.identity(int(entry.name))):
                found.add(identity)
        return found

    def kill_everything(self) -> None:
        """Whatever of the demo still runs, so that a failed test leaves nothing behind."""
        for identity in self.processes():
            try:
                os.kill(int(identity.partition("@")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


@pytest.fixture
def demos(tmp_path):
    started: list[Demo] = []

    def start(environ: dict[str, str] | None = None) -> Demo:
        started.append(Demo(tmp_path / "home", environ))
        return started[-1]

    yield start
    for demo in started:
        demo.kill_everything()


def still_running(identities: set[str]) -> set[str]:
    return {identity for identity in identities if processes.identity(int(identity.partition("@")[0])) == identity}


@pytest.mark.parametrize(
    "signum, environ",
    [
        # The full demo once, with the Spark Connect server that was the one left behind.
        (signal.SIGTERM, {}),
        (signal.SIGHUP, NO_SPARK_SERVER),
        (signal.SIGINT, NO_SPARK_SERVER),
    ],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_stop_signal_stops_every_process_of_the_demo(demos, signum, environ):
    demo = demos(environ)
    demo.wait_until_up()
    running = demo.processes()
    # The demo, the ingest service, the Dagster webserver and daemon (and their code
    # servers), and the Spark Connect server unless told to use another.
    assert len(running) >= (5 if environ else 6), running

    demo.process.send_signal(signum)
    demo.process.wait(timeout=60)

    assert demo.process.returncode == 0, demo.log.read_text()
    assert still_running(running) == set(), demo.log.read_text()
    assert demo.processes() == set()


def test_a_demo_killed_outright_leaves_nothing_for_the_next_one(demos):
    first = demos()
    first.wait_until_up()
    running = first.processes()

    first.process.kill()
    first.process.wait()
    # Its children got SIGTERM from the kernel as it died, and stop as they would on
    # Ctrl-C; anything they had started that outlived them, the next demo stops.
    second = demos(NO_SPARK_SERVER)
    second.wait_until_up()

    assert still_running(running) == set(), second.log.read_text()
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=60) == 0


def test_orphans_are_those_whose_owner_died(tmp_path):
    """A grandchild outlives its parent's SIGTERM (a run a daemon had launched, say): the
    sweep a demo does on start stops it once the process that launched the tree is gone,
    and not before."""
    pids = tmp_path / "pids"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from gaming_pipeline.lib import processes\n"
            "child = processes.start(['sh', '-c', 'sleep 600 & echo $!; wait'], {}, Path(sys.argv[1]))\n"
            "time.sleep(600)\n",
            str(pids),
        ]
    )
    grandchild = 0
    try:
        grandchild = int(wait_until(lambda: pids.exists() and pids.read_text().strip(), 30, "the grandchild"))
        identity = processes.identity(grandchild)
        assert grandchild not in processes.stop_orphans(), "its owner is alive"

        owner.kill()
        owner.wait()
        assert still_running({identity}) == {identity}, "the grandchild outlives its parent"
        assert grandchild in processes.stop_orphans()
        assert still_running({identity}) == set()
    finally:
        owner.kill()
        if grandchild and processes.identity(grandchild):
            os.kill(grandchild, signal.SIGKILL)
