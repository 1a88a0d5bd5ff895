"""Loading the code location, which every run does before its first Spark call, leaves the
libraries only some runs need unimported (issue 17: run start). A fresh interpreter loads
it, so nothing this test session imported before counts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Each costs a tenth to half a second of every run's start when imported at load, and only
# some runs need it: charts (matplotlib, Pillow), the PII vault (cryptography), alert
# delivery (requests).
ONLY_WHERE_USED = (
    "matplotlib",
    "PIL",
    "cryptography",
    "requests",
    "boto3",
    "dagster_aws",
    "sqlalchemy",
    "pandas",
    "grpc",
)

_LOAD = """
import json, sys
from gaming_pipeline.definitions import defs
defs()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.unit
def test_loading_the_code_location_leaves_what_only_some_runs_need_unimported():
    loaded = subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, check=True)
    imported = set(json.loads(loaded.stdout.splitlines()[-1]))
    assert [name for name in ONLY_WHERE_USED if name in imported] == []


PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_a_plain_install_loads_the_definitions_with_no_jars_fetched(tmp_path):
    """As the image's `pip install .` does: the package copied into site-packages, away from the
    clone's files, and no jar cache yet (the image fetches the jars after installing)."""
    # From a copy of the sources, as the image's build context is: setuptools builds in the
    # source folder, and the clone's files must not be what the install finds.
    source = tmp_path / "source"
    shutil.copytree(
        PROJECT / "gaming_pipeline", source / "gaming_pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("setup.py", "README.md"):
        shutil.copy(PROJECT / name, source)
    target = tmp_path / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            target,
            source,
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "no-cache")}
    env.pop("DAGSTER_HOME", None)
    assert_validates(["-m", "gaming_pipeline.definitions"], tmp_path, env)
    located = subprocess.run(
        [sys.executable, "-c", "import gaming_pipeline, sys; print(gaming_pipeline.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert located.stdout.startswith(str(target)), located.stdout
    assert not (tmp_path / "no-cache").exists()


@pytest.mark.e2e
def test_the_clone_top_level_workspace_loads_the_code_location(tmp_path):
    """`dagster dev` in a clone reads workspace.yaml at the top: it loads the module, as the
    README shows (the production workspace, deploy/workspace.yaml, names a gRPC server)."""
    assert_validates(["-w", "workspace.yaml"], PROJECT, {**os.environ, "DAGSTER_HOME": str(tmp_path)})


def assert_validates(where: list[str], cwd: Path, env: dict[str, str]) -> None:
    """`dagster definitions validate` on the code location `where` names, run in `cwd`."""
    validated = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", *where],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert validated.returncode == 0, (validated.stdout + validated.stderr)[-3000:]
    assert "Validation successful" in validated.stdout + validated.stderr
