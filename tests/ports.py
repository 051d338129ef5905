"""A free TCP port on this machine, for tests and benchmarks that start servers (`tests/` is on the
benchmarks' sys.path through benchmarks/bench_env.py)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; a race with another process is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_block(count: int, host: str = "127.0.0.1", first: int = 20000, last: int = 32000) -> int:
    """The first port of `count` consecutive ports nothing listens on now, below Linux's ephemeral
    range (32768-60999, where the OS hands out free_port()'s and Ray's own ports), so a later
    free_port() cannot take one of them."""
    start = first
    while start + count <= last:
        for offset in range(count):
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, start + offset))
            except OSError:
                start += offset + 1
                break
        else:
            return start
    raise RuntimeError(f"no {count} consecutive free ports between {first} and {last}")
