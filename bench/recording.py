"""What every benchmark writes down: when, on which machine and versions, and its figures."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from gaming_pipeline.lib import aws

RESULTS = Path(__file__).resolve().parent / "results"


def context(packages: tuple[str, ...]) -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {name: version(name) for name in packages},
    }


@contextmanager
def workplace() -> Iterator[Path]:
    """A local AWS endpoint in this process's environment and a scratch folder, both gone
    when the benchmark ends."""
    local = aws.LocalAws().start()
    os.environ.update(local.environment())
    work = Path(tempfile.mkdtemp(prefix="gp-bench-"))
    try:
        yield work
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)


def write(benchmark: str, results: dict) -> Path:
    """bench/results/<benchmark>-<date>.json, printed too."""
    out = RESULTS / f"{benchmark}-{results['date'][:10]}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return out
