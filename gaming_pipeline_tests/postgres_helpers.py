"""A real PostgreSQL server on 127.0.0.1 for the Dagster instance of the production config,
from the machine's own PostgreSQL binaries (`.ci/run` installs Debian's `postgresql`)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg2

from gaming_pipeline.local import processes
from gaming_pipeline.local.ports import free_port

DATABASE = "dagster"
USER = "dagster"
PASSWORD = "dagster-test-password"
# PostgreSQL refuses to run as root: then the server runs as the system's `postgres` user.
SERVER_USER = "postgres"


def binaries() -> Path:
    """The folder of initdb and postgres: on PATH, or where Debian puts them."""
    on_path = shutil.which("initdb")
    found = [os.path.dirname(on_path)] if on_path else sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    return Path(found[-1])


@contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """A fresh cluster with a password-protected `dagster` database; yields the DAGSTER_PG_*
    variables deploy/dagster.production.yaml reads."""
    # Not under pytest's tmp_path: the server's user must be able to reach its folder.
    data = Path(tempfile.mkdtemp(prefix="gp-postgres-"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(data, account.pw_uid, account.pw_gid)
        as_server_user = ["runuser", "-u", SERVER_USER, "--"]
    password_file = data / "password"
    password_file.write_text(PASSWORD)
    if as_server_user:
        os.chown(password_file, account.pw_uid, account.pw_gid)
    cluster = data / "cluster"
    subprocess.run(
        [
            *as_server_user,
            str(binaries() / "initdb"),
            "--pgdata",
            str(cluster),
            "--username",
            USER,
            "--pwfile",
            str(password_file),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = data / "postgres.log"
    server = processes.start(
        [
            *as_server_user,
            str(binaries() / "postgres"),
            "-D",
            str(cluster),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(data),
            # A test cluster: losing it in a machine crash costs nothing.
            "-c",
            "fsync=off",
        ],
        dict(os.environ),
        log,
    )
    try:
        processes.wait_until_serving(f"postgresql://127.0.0.1:{port}", 60, server, log)
        # CREATE DATABASE cannot run in a transaction, and psycopg2's `with` opens one.
        with closing(
            psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
        ) as connection:
            connection.autocommit = True
            connection.cursor().execute(f"CREATE DATABASE {DATABASE}")
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": DATABASE,
            "DAGSTER_PG_USERNAME": USER,
            "DAGSTER_PG_PASSWORD": PASSWORD,
        }
    finally:
        processes.stop([server])
        shutil.rmtree(data, ignore_errors=True)


def successful_runs(environ: dict[str, str], job_name: str) -> int:
    """Successful runs of a job, read from the instance's own tables in Postgres."""
    with closing(
        psycopg2.connect(
            host=environ["DAGSTER_PG_HOST"],
            port=int(environ["DAGSTER_PG_PORT"]),
            user=environ["DAGSTER_PG_USERNAME"],
            password=environ["DAGSTER_PG_PASSWORD"],
            dbname=environ["DAGSTER_PG_DB"],
        )
    ) as connection:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT count(*) FROM runs WHERE pipeline_name = %s AND status = 'SUCCESS'", (job_name,)
        )
        return cursor.fetchone()[0]
