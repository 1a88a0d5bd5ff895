"""The demo stops every process it started whatever ends it: Ctrl-C, `kill`, the terminal
closed (SIGINT, SIGTERM, SIGHUP: an orderly stop), or kill -9 (its children get SIGTERM
from the kernel, and the next demo clears whatever is left before it starts)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaming_pipeline import cli
from gaming_pipeline.local import processes
from gaming_pipeline_tests.service_helpers import wait_until

pytestmark = pytest.mark.e2e

PROC = Path("/proc")
# No Spark Connect server of its own (the slowest start): runs would find nothing there.
NO_SPARK_SERVER = {"GAMING_PIPELINE_SPARK_MASTER": "sc://127.0.0.1:9"}
# A process that starts a shell command (argv[1]) with processes.start, the command's
# output (a pid) in the file argv[2], and waits.
OWNER = """
import sys, time
from pathlib import Path
from gaming_pipeline.local import processes
processes.start(["sh", "-c", sys.argv[1]], {}, Path(sys.argv[2]))
time.sleep(600)
"""


def start_owner(script: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A process that start()s `sh -c script` (which writes a pid to the file returned) and
    then lives on, as the demo does."""
    pids = tmp_path / "pids"
    return subprocess.Popen([sys.executable, "-c", OWNER, script, str(pids)]), pids


def launched(pids: Path) -> int:
    """The pid the owner's script wrote."""
    return int(wait_until(lambda: pids.exists() and pids.read_text().strip(), 30, "the launched process"))


class Demo:
    """`gaming-pipeline demo` as a user runs it, on its own home and on free ports, its output
    read from a pipe."""

    def __init__(self, home: Path, environ: dict[str, str] | None = None):
        self.home = home
        self.output = b""
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GAMING_PIPELINE_", "AWS_", "DAGSTER_", "SPARK_REMOTE"))
        }
        ports = [f"--{name}-port=0" for name in ("ui", "aws", "ingest", "spark")]
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gaming-pipeline"),
                "demo",
                "--rate",
                "2",
                "--history-days",
                "0",
                *ports,
            ],
            env={**inherited, "GAMING_PIPELINE_HOME": str(home), **(environ or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def said(self) -> str:
        """What it printed so far."""
        pipe = self.process.stdout
        while (
            not pipe.closed
            and select.select([pipe], [], [], 0)[0]
            and (chunk := os.read(pipe.fileno(), 65536))
        ):
            self.output += chunk
        return self.output.decode(errors="replace")

    def wait_until_up(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, f"the demo exited: {self.said()}"
            return "demo is up" in self.said()

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
            if marker in environ.split(b"\0") and (running := identity(int(entry.name))):
                found.add(running)
        return found

    def kill_everything(self) -> None:
        """Whatever of the demo still runs, so that a failed test leaves nothing behind."""
        for running in self.processes():
            try:
                os.kill(int(running.partition("@")[0]), signal.SIGKILL)
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


def identity(pid: int) -> str:
    """`pid@start-time` of a running process (a later one given the same pid differs), or
    empty: the test's own reading of /proc, to judge the code rather than trust it."""
    try:
        stat = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if stat[0] == "Z" else f"{pid}@{stat[19]}"


def still_running(identities: set[str]) -> set[str]:
    return {known for known in identities if identity(int(known.partition("@")[0])) == known}


def test_kill_stops_every_process_of_the_demo(demos):
    """The full demo, with the Spark Connect server that `kill` used to leave behind."""
    demo = demos()
    demo.wait_until_up()
    running = demo.processes()
    # The demo, the Spark Connect server, the ingest service, the Dagster webserver and
    # daemon, and the code server of either.
    assert len(running) >= 6, running

    demo.process.send_signal(signal.SIGTERM)
    demo.process.wait(timeout=90)

    assert still_running(running) == set(), demo.said()
    assert demo.processes() == set()
    assert demo.process.returncode == 0, demo.said()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_every_stop_signal_is_a_ctrl_c(signum):
    """Ctrl-C, the terminal closed and `kill` take the same orderly stop (the one the
    demo above goes through on SIGTERM)."""
    kept = {each: signal.getsignal(each) for each in cli.STOP_SIGNALS}
    try:
        cli._on_stop_signals(cli._interrupt)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(5)
    finally:
        for each, handler in kept.items():
            signal.signal(each, handler)


def test_stopping_goes_on_when_nobody_reads_the_output(tmp_path):
    """The terminal closed, or `make demo | tee` where the same Ctrl-C ended tee: the
    demo's lines while stopping go nowhere, and the stop goes on."""
    went_on = tmp_path / "went-on"
    tell = "import sys\nfrom gaming_pipeline.cli import _tell\n_tell('stopping ...')\nopen(sys.argv[1], 'w')"
    telling = subprocess.Popen([sys.executable, "-c", tell, str(went_on)], stderr=subprocess.PIPE)
    telling.stderr.close()

    try:
        assert telling.wait(timeout=60) == 0
    finally:
        telling.kill()
        telling.wait()
    assert went_on.exists()


def test_a_demo_killed_outright_leaves_nothing_running(demos):
    demo = demos(NO_SPARK_SERVER)
    demo.wait_until_up()
    running = demo.processes()

    demo.process.kill()
    demo.process.wait()

    # Its children got SIGTERM from the kernel as it died, and stop as they do on Ctrl-C.
    wait_until(lambda: not still_running(running), 60, "the demo's processes stopping")


def test_a_child_stops_when_its_owner_is_killed_outright(tmp_path):
    """Even through exec, as the Spark Connect server's python, shell and java are one
    process in turn."""
    owner, pids = start_owner("echo $$; exec sleep 600", tmp_path)
    child = 0
    try:
        child = launched(pids)
        the_child = identity(child)
        owner.kill()
        owner.wait()
        wait_until(lambda: not still_running({the_child}), 10, "the child stopping")
    finally:
        owner.kill()
        if child and identity(child):
            os.kill(child, signal.SIGKILL)


def test_orphans_are_those_whose_owner_died(tmp_path):
    """A grandchild outlives its parent's SIGTERM (a run a daemon had launched, say): the
    sweep a demo does on start stops it once the process that launched the tree is gone,
    and not before."""
    owner, pids = start_owner("sleep 600 & echo $!; wait", tmp_path)
    grandchild = 0
    try:
        grandchild = launched(pids)
        the_grandchild = identity(grandchild)
        assert grandchild not in processes.stop_orphans(), "its owner is alive"

        owner.kill()
        owner.wait()
        assert still_running({the_grandchild}) == {the_grandchild}, "the grandchild outlives its parent"
        assert grandchild in processes.stop_orphans()
        assert still_running({the_grandchild}) == set()
    finally:
        owner.kill()
        if grandchild and identity(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_what_start_launches_stops_on_sigterm_whoever_started_us(tmp_path):
    """Started from a background job, nohup or a wrapper that ignores SIGTERM, a process
    inherits the signals it ignores: a child that ignored SIGTERM would outlive the demo's
    stop and its parent-death signal, and uvicorn would stop on it and exit 0."""
    kept = {each: signal.getsignal(each) for each in cli.STOP_SIGNALS}
    try:
        for each in cli.STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        child = processes.start(["sleep", "600"], {}, tmp_path / "sleep.log")
    finally:
        for each, handler in kept.items():
            signal.signal(each, handler)
    try:
        # Once it runs sleep: a signal the launcher ignores on the way there is lost.
        wait_until(lambda: (PROC / str(child.pid) / "cmdline").read_bytes().startswith(b"sleep"), 10, "sleep")
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
