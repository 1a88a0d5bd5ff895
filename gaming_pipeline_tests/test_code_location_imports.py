"""Loading the code location, which every run does before its first Spark call, leaves the
libraries only some runs need unimported (issue 17: run start). A fresh interpreter loads
it, so nothing this test session imported before counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

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


def test_loading_the_code_location_leaves_what_only_some_runs_need_unimported():
    loaded = subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, check=True)
    imported = set(json.loads(loaded.stdout.splitlines()[-1]))
    assert [name for name in ONLY_WHERE_USED if name in imported] == []
