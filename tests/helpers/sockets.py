"""Watching the sockets of processes for a whole command: TCP and UDP, IPv4 and IPv6, bound and connected.

The kernel's socket tables (/proc/net/{tcp,udp}{,6}) are read on every poll, which costs little. Which
process holds a socket is found from the /proc/PID/fd of the watched processes only, at once when a
socket off loopback appears and twice a second otherwise. `ss -p`, used before, walks every fd of every
process on the machine at each poll: under the full suite on two cores that took more CPU than the
sweeps it watched."""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
from pathlib import Path

TABLES = ("tcp", "tcp6", "udp", "udp6")


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


def named(names: tuple[str, ...]) -> set[int]:
    """The processes whose name (/proc/PID/comm, the name `ps` and `ss` show) contains one of `names`."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text()
            except OSError:
                continue
            if any(name in comm for name in names):
                found.add(int(entry))
    return found


def socket_inodes(pids: set[int]) -> set[str]:
    """The inodes of the sockets these processes hold open."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def address(hex_address: str) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """A /proc/net address ("0100007F:1F90", or 32 hex digits for IPv6) as `host:port` and its host. The
    kernel writes each 32-bit word of the host in the machine's byte order; an IPv4 address seen through
    an IPv6 socket (::ffff:127.0.0.1) is given as the IPv4 one."""
    host, port = hex_address.split(":")
    words = [bytes.fromhex(host[i : i + 8]) for i in range(0, len(host), 8)]
    ip = ipaddress.ip_address(b"".join(w[::-1] if sys.byteorder == "little" else w for w in words))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (f"{ip}:{int(port, 16)}" if ip.version == 4 else f"[{ip}]:{int(port, 16)}"), ip


class SocketWatch:
    """Every TCP and UDP socket of the watched processes, polled while the block runs (not one snapshot at
    its end): `seen` holds them as (kind, local, peer), and `off_loopback` those bound anywhere but
    loopback or connected to anywhere but loopback.

    The watched processes are `root` and its whole tree, or those whose name contains one of `names`."""

    def __init__(self, *, root: int | None = None, names: tuple[str, ...] = (), interval: float = 0.05) -> None:
        if (root is None) == (not names):
            raise ValueError("SocketWatch watches a process tree (root) or processes by name, one of them")
        self.root, self.names, self.interval = root, names, interval
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

    def _watched(self) -> set[int]:
        return process_tree(self.root) if self.root is not None else named(self.names)

    def _poll(self) -> None:
        decoded: dict[tuple[str, str, str], tuple[str, str, bool]] = {}
        reported: set[str] = set()  # inodes already in off_loopback
        off_checked: set[str] = set()  # off-loopback inodes a scan has looked at (another is due at once)
        next_scan = 0.0
        while True:
            stopping = self._stop.is_set()  # one last poll after the block ends
            current: dict[str, tuple[str, str, str, bool]] = {}
            for table in TABLES:
                try:
                    lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
                except OSError:
                    continue
                for line in lines:
                    fields = line.split()
                    inode = fields[9]
                    if inode == "0":  # TIME_WAIT and the like: no process holds it any more
                        continue
                    key = (fields[1], fields[2], table)
                    if key not in decoded:
                        local, local_ip = address(fields[1])
                        peer, peer_ip = address(fields[2])  # 0.0.0.0 or :: when unconnected
                        ok = local_ip.is_loopback and (peer_ip.is_loopback or peer_ip.is_unspecified)
                        decoded[key] = (local, peer, ok)
                    local, peer, on_loopback = decoded[key]
                    current[inode] = (table.rstrip("6"), local, peer, on_loopback)
            now = time.monotonic()
            new_off = {inode for inode, (*_, ok) in current.items() if not ok} - off_checked
            if new_off or now >= next_scan or stopping:
                held = socket_inodes(self._watched())
                for inode, (kind, local, peer, on_loopback) in current.items():
                    if inode in held:
                        self.seen.add((kind, local, peer))
                        if not on_loopback and inode not in reported:
                            reported.add(inode)
                            self.off_loopback.append(f"{kind} {local} -> {peer} (socket {inode})")
                off_checked |= new_off
                next_scan = now + 0.5
            if stopping:
                return
            self._stop.wait(self.interval)
