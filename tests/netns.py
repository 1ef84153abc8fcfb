"""A private network for tests: a server and its sites in their own network namespaces.

Theory of operation. :class:`NetLab` builds, with ``ip`` (iproute2), one namespace for the
server and one per site, all on a private ``/24`` chosen at random among the ``10.x.y.0``
nets that no route of this machine uses::

    host (the test process)          server namespace                  site namespace
      fl<id>h0 10.x.y.254 ─veth─ fl<id>h1 ┐
                                          ├─ br0 10.x.y.1 (the server)
                                fl<id>a0 ─┘ ─veth─ fl<id>a1 10.x.y.2  (site 0), ...

Each site reaches the server through its own veth pair, so one site's link can be cut
(``ip link set DEV down``) and restored, or degraded with ``tc`` (``netem`` delay and loss
where the kernel has it, ``tbf`` shaping otherwise), without touching the others; the test
process reaches the server (its admin port) through the host pair. Names are unique per
run (``flare-<pid>-<hex>-...`` namespaces, ``fl<hex>..`` interfaces); :meth:`NetLab.close`
deletes the namespaces (which deletes every veth in them, the host end included) and
never raises, and :func:`sweep_stale` removes what a killed test run left. Programs run
in a namespace with :meth:`NetLab.argv` (``ip netns exec NS ...``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["NetLab", "NetLabUnavailable", "netem_available", "sweep_stale", "unavailable_reason"]

_NS_PREFIX = "flare-"
_NS_PATTERN = re.compile(r"^flare-(\d+)-[0-9a-f]{6}-")


class NetLabUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no permission)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=10
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {ns} failed: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (for ``pytest.skip``), or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the suite as root to run it"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    probe = f"{_NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()}"
    try:
        veth = _ip(
            "-n",
            probe,
            "link",
            "add",
            "flprobe0",
            "type",
            "veth",
            "peer",
            "name",
            "flprobe1",
            check=False,
        )
        if veth.returncode != 0:
            return f"cannot create veth pairs here: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "flprobebr", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create bridges here: {bridge.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def netem_available() -> str | None:
    """None when ``tc qdisc ... netem`` works here, else why not (for ``pytest.skip``)."""
    probe = f"{_NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-netem"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return "ip netns add is not permitted here"
    try:
        _ip("-n", probe, "link", "set", "lo", "up", check=False)
        done = _tc(probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
        if done.returncode != 0:
            return f"tc netem is not available in this kernel (sch_netem): {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def sweep_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose test process is gone; their names."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ", 1)[0]
        found = _NS_PATTERN.match(name)
        if not found:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
            continue  # its run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A ``10.x.y.0/24`` that no route of this machine overlaps."""
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    used = []
    for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", routes):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(token, strict=False))
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise NetLabUnavailable("no free 10.x.y.0/24 subnet found for the test network")


class NetLab:
    """Namespaces, veth pairs and a bridge for one server and ``sites`` (a context manager)."""

    def __init__(self, sites: Sequence[str]) -> None:
        reason = unavailable_reason()
        if reason:
            raise NetLabUnavailable(reason)
        self.id = secrets.token_hex(3)
        self.net = _free_subnet()
        hosts = list(self.net.hosts())
        self.server_ip = str(hosts[0])
        self.host_ip = str(hosts[-1])
        self.prefix = f"/{self.net.prefixlen}"
        base = f"{_NS_PREFIX}{os.getpid()}-{self.id}"
        self.server_ns = f"{base}-srv"
        self.site_ns = {site: f"{base}-s{i}" for i, site in enumerate(sites)}
        self.site_ip = {site: str(hosts[i + 1]) for i, site in enumerate(sites)}
        #: The veth end of each site in the server namespace (on the bridge) and its own.
        self.server_end = {site: f"fl{self.id}a{i}" for i, site in enumerate(sites)}
        self.site_end = {site: f"fl{self.id}b{i}" for i, site in enumerate(sites)}
        self._made: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> NetLab:
        """Build the network; on any failure remove what was built, then raise."""
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        srv = self.server_ns
        _ip("netns", "add", srv)
        self._made.append(srv)
        _ip("-n", srv, "link", "set", "lo", "up")
        _ip("-n", srv, "link", "add", "br0", "type", "bridge")
        _ip("-n", srv, "addr", "add", self.server_ip + self.prefix, "dev", "br0")
        _ip("-n", srv, "link", "set", "br0", "up")
        # the host's pair: the test process dials the admin port through it
        host0, host1 = f"fl{self.id}h0", f"fl{self.id}h1"
        _ip("link", "add", host0, "type", "veth", "peer", "name", host1, "netns", srv)
        _ip("-n", srv, "link", "set", host1, "master", "br0", "up")
        _ip("addr", "add", self.host_ip + self.prefix, "dev", host0)
        _ip("link", "set", host0, "up")
        for site, ns in self.site_ns.items():
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            near, far = self.site_end[site], self.server_end[site]
            _ip("-n", ns, "link", "add", near, "type", "veth", "peer", "name", far, "netns", srv)
            _ip("-n", srv, "link", "set", far, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", self.site_ip[site] + self.prefix, "dev", near)
            _ip("-n", ns, "link", "set", near, "up")

    def close(self) -> None:
        """Delete every namespace made (their veths go with them); never raises."""
        for ns in reversed(self._made):
            with contextlib.suppress(Exception):
                _ip("netns", "del", ns, check=False)
        self._made.clear()
        with contextlib.suppress(Exception):  # gone with the server namespace already
            _ip("link", "del", f"fl{self.id}h0", check=False)

    def __enter__(self) -> NetLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self) -> bool:
        """Whether any of this lab's namespaces is still there."""
        listed = _ip("netns", "list", check=False).stdout
        return any(ns in listed for ns in (self.server_ns, *self.site_ns.values()))

    # -- using it ------------------------------------------------------------------------
    def argv(self, ns: str, *command: str) -> list[str]:
        """``command`` run in namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *command]

    def cut(self, site: str) -> None:
        """Take ``site``'s link down: nothing passes either way until :meth:`restore`."""
        _ip("-n", self.server_ns, "link", "set", self.server_end[site], "down")

    def restore(self, site: str) -> None:
        """Bring ``site``'s link back up."""
        _ip("-n", self.server_ns, "link", "set", self.server_end[site], "up")

    def netem(self, site: str, *spec: str) -> None:
        """``tc qdisc replace ... netem SPEC`` on both ends of ``site``'s link (each
        direction gets it: a 50 ms delay on each end is 100 ms of round trip)."""
        _tc(
            self.site_ns[site],
            "qdisc",
            "replace",
            "dev",
            self.site_end[site],
            "root",
            "netem",
            *spec,
        )
        _tc(
            self.server_ns, "qdisc", "replace", "dev", self.server_end[site], "root", "netem", *spec
        )

    def shape(self, site: str, rate: str, burst: str = "4kb", latency: str = "100ms") -> None:
        """A slow link without netem: ``tbf`` on both ends (packets beyond its queue, held
        at most ``latency``, are dropped: queueing delay and loss under load)."""
        for ns, dev in (
            (self.site_ns[site], self.site_end[site]),
            (self.server_ns, self.server_end[site]),
        ):
            _tc(
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            )

    def qdisc_stats(self, site: str) -> str:
        """``tc -s qdisc show`` of both ends of ``site``'s link (bytes sent, drops)."""
        return "".join(
            _tc(ns, "-s", "qdisc", "show", "dev", dev).stdout
            for ns, dev in (
                (self.site_ns[site], self.site_end[site]),
                (self.server_ns, self.server_end[site]),
            )
        )

    def clear(self, site: str) -> None:
        """Remove any qdisc added to ``site``'s link."""
        _tc(self.site_ns[site], "qdisc", "del", "dev", self.site_end[site], "root", check=False)
        _tc(self.server_ns, "qdisc", "del", "dev", self.server_end[site], "root", check=False)
