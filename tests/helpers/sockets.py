"""Watching the sockets of processes for a whole command: TCP and UDP, bound and connected, by `ss`."""

from __future__ import annotations

import os
from pathlib import Path

LOOPBACK = ("127.", "[::1]", "[::ffff:127.")
NO_PEER = ("*:*", "*", "0.0.0.0:*", "[::]:*")  # a listening or unconnected socket's peer


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


class SocketWatch:
    """Every TCP and UDP socket of the watched processes, polled with `ss` while the block runs (not one
    snapshot at its end): `off_loopback` lists those bound or connected anywhere but loopback.

    `watched(pids, line)` says whether an `ss -p` line belongs to the processes of interest; or `root`,
    a process whose whole tree is watched (read from /proc once a poll, not once a line)."""

    def __init__(self, watched=None, interval: float = 0.05, root: int | None = None) -> None:
        import threading

        self.watched, self.interval, self.root = watched, interval, root
        self.seen: set[tuple[str, str, str]] = set()
        self.off_loopback: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        import re
        import subprocess

        while not self._stop.is_set():
            lines = subprocess.run(["ss", "-Htuanp"], capture_output=True, text=True).stdout.splitlines()
            tree = process_tree(self.root) if self.root is not None else set()
            for line in lines:
                pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
                if not (pids & tree if self.root is not None else self.watched(pids, line)):
                    continue
                kind, _, _, _, local, peer = line.split()[:6]
                self.seen.add((kind, local, peer))
                if not local.startswith(LOOPBACK) or not (peer.startswith(LOOPBACK) or peer in NO_PEER):
                    self.off_loopback.append(line)
            self._stop.wait(self.interval)
