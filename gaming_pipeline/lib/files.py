"""Plain files beside the tables: one call serves a local warehouse and an `s3a://` one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from gaming_pipeline.lib import aws


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` (a path, `file:`, or `s3a://bucket/key`), replacing what was
    there, whole or not at all. Written by this process rather than through Spark, whose
    driver may be a Spark Connect server on another machine."""
    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3"):
        aws.client("s3").put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        return
    path = Path(parsed.path if parsed.scheme == "file" else uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
