"""Ports on the loopback interface for the local stack's servers."""

from __future__ import annotations

import socket


def free_port(prefer: int = 0) -> int:
    """`prefer` if nothing listens on it on 127.0.0.1, else a port the system picks."""
    for port in (prefer, 0) if prefer else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")
