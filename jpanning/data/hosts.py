"""Whether a download host answers (shared by the loader and the tfds builders)."""

from __future__ import annotations

import socket

HOST_TIMEOUT_S = 2.0


def host_reachable(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds, and why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, "connected"
    except OSError as err:
        return False, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
