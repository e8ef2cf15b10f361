"""The socket watch of the cluster tests (tests/helpers/sockets.py) catches what it is there to catch.

A socket "off loopback" here is bound with IP_FREEBIND to 203.0.113.7 (TEST-NET-3), an address no
interface has: it shows in the kernel's tables like any other, and nothing can reach it or leave it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .helpers.sockets import SocketWatch, address

# Each socket lives `hold` seconds after the watch started, then closes: the watch must see it live.
SOCKETS = textwrap.dedent(
    """
    import socket, sys, time
    name, hold, off = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "off"
    open("/proc/self/comm", "w").write(name)
    time.sleep(0.3)
    kind = socket.SOCK_DGRAM if name.endswith("udp") else socket.SOCK_STREAM
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0)); listener.listen()
    peer = socket.create_connection(listener.getsockname())
    stray = socket.socket(socket.AF_INET, kind)
    if off:
        stray.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
    stray.bind(("203.0.113.7" if off else "127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        stray.listen()
    time.sleep(hold)
    stray.close()
    if len(sys.argv) > 4:  # and a child of its own, with a stray socket of its own
        import subprocess
        subprocess.run([sys.executable, __file__, *sys.argv[4:]], check=True)
    time.sleep(0.2)
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "sockets.py"
    path.write_text(SOCKETS)
    return path


def started(script, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args])


def test_a_short_lived_socket_off_loopback_in_a_grandchild_is_caught_and_a_neighbours_is_not(script):
    neighbour = started(script, "mnx-neighbour", "1.5", "off")
    process = started(script, "mnx-parent-udp", "0.15", "off", "mnx-child-tcp", "0.15", "off")
    with SocketWatch(root=process.pid) as sockets:
        assert process.wait(timeout=60) == 0
    assert neighbour.wait(timeout=60) == 0
    strays = sorted(line.split()[0] + " " + line.split()[1].split(":")[0] for line in sockets.off_loopback)
    assert strays == ["tcp 203.0.113.7", "udp 203.0.113.7"]  # the parent's, the child's; never the neighbour's
    kinds = {(kind, local.split(":")[0]) for kind, local, _ in sockets.seen}
    assert ("tcp", "127.0.0.1") in kinds  # its loopback sockets were seen, and not reported


def test_a_watch_by_name_reports_only_the_named_processes(script):
    neighbour = started(script, "mnx-neighbour", "1.0", "off")
    named = started(script, "mnx-named-udp", "1.0", "off")
    clean = started(script, "mnx-clean-tcp", "1.0", "on")
    with SocketWatch(names=("mnx-named", "mnx-clean")) as sockets:
        assert named.wait(timeout=60) == clean.wait(timeout=60) == neighbour.wait(timeout=60) == 0
    assert [line.split()[0] for line in sockets.off_loopback] == ["udp"]
    assert all("203.0.113.7" in line for line in sockets.off_loopback)


@pytest.mark.parametrize(
    ("kernel", "shown", "loopback"),
    [
        # /proc/net/tcp: each 32-bit word of the host in the machine's order (little-endian here).
        ("0100007F:1F90", "127.0.0.1:8080", True),
        ("077100CB:9C66", "203.0.113.7:40038", False),
        ("00000000:0000", "0.0.0.0:0", False),
        ("00000000000000000000000001000000:0016", "[::1]:22", True),
        ("0000000000000000FFFF00000100007F:93C5", "127.0.0.1:37829", True),
        ("B80D0120000000000000000007000000:955C", "[2001:db8::7]:38236", False),
    ],
)
def test_kernel_addresses_read_as_ss_shows_them(kernel, shown, loopback):
    text, ip = address(kernel)
    assert (text, ip.is_loopback) == (shown, loopback)
