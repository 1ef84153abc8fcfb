"""Fault injection: ``kill -9`` of sites and of the server, and network cuts.

:class:`FaultInjector` is a thread that, every few seconds (uniform between the two
bounds), injects one fault and repairs it: a site is SIGKILLed and restarted after a
pause; the server is SIGKILLed and restarted on the same workspace and ports; or the
relay between the sites and the server is cut (every connection closed, new ones refused)
for a while, then restored. The first faults go through every kind once, in random order,
so that even a short run injects each kind; two server kills are at least ``server_gap``
seconds apart, so that the server's memory is watched over long enough stretches. After
each repair it measures the time until
every site is connected again (seen through an observer Session of its own, not one of
the workload's).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from bench.soak.cluster import Cluster
from flare_admin import APIError, new_secure_session

KINDS = ("site_kill", "server_kill", "network_cut")
WEIGHTS = {"site_kill": 3, "server_kill": 1, "network_cut": 3}


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # seconds since the soak started
    outage: float  # seconds between the fault and its repair
    recovered_after: float | None  # seconds from the repair until every site was connected
    note: str = ""
    window: tuple[float, float] = (0.0, 0.0)  # monotonic: the fault until every site was back


class FaultInjector(threading.Thread):
    def __init__(
        self,
        cluster: Cluster,
        admin: str,
        started: float,
        rng: random.Random,
        interval: tuple[float, float],
        server_gap: float,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.cluster = cluster
        self.admin = admin
        self.started = started
        self.rng = rng
        self.interval = interval
        self.server_gap = server_gap
        self._last_server_kill = -server_gap
        self.stop = threading.Event()
        self.faults: list[Fault] = []
        self.crash: BaseException | None = None
        self.lock = threading.Lock()  # held while a fault is in progress

    def run(self) -> None:
        order = list(KINDS)
        self.rng.shuffle(order)
        try:
            while not self.stop.wait(self.rng.uniform(*self.interval)):
                kind = order.pop(0) if order else self._weighted()
                with self.lock:
                    self.faults.append(self._inject(kind))
        except BaseException as exc:
            self.crash = exc

    def _weighted(self) -> str:
        weights = dict(WEIGHTS)
        if time.monotonic() - self._last_server_kill < self.server_gap:
            del weights["server_kill"]
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def _inject(self, kind: str) -> Fault:
        at = time.monotonic() - self.started
        outage_start = time.monotonic()
        fault_wall = time.time()
        note = ""
        if kind == "site_kill":
            site = self.rng.choice(list(self.cluster.sites.values()))
            target = site.name
            site.kill()
            time.sleep(self.rng.uniform(0.5, 4.0))
            site.start()
        elif kind == "server_kill":
            target = "server"
            self._last_server_kill = time.monotonic()
            self.cluster.server.kill()
            time.sleep(self.rng.uniform(0.2, 3.0))
            note = self._restart_server()
        else:
            target = "relay (all sites)"
            self.cluster.relay.down()
            time.sleep(self.rng.uniform(1.0, 8.0))
            self.cluster.relay.up()
        outage = time.monotonic() - outage_start
        if kind == "site_kill":  # the restarted site registered anew
            recovered = self._connected_after({target: "connected_since"}, fault_wall)
        else:  # every site heartbeats through the repaired path
            repaired = time.time()
            recovered = self._connected_after(
                dict.fromkeys(self.cluster.sites, "last_connect_time"), repaired
            )
        window = (outage_start, time.monotonic())
        return Fault(kind, target, at, outage, recovered, note, window)

    def _restart_server(self) -> str:
        for attempt in range(5):
            try:
                self.cluster.server.start()
                return "" if attempt == 0 else f"started on attempt {attempt + 1}"
            except RuntimeError as exc:
                last = str(exc)
                time.sleep(1.0)
        raise RuntimeError(f"the server would not restart after a kill: {last}")

    def _connected_after(
        self, fields: dict[str, str], since: float, timeout: float = 90.0
    ) -> float | None:
        """Seconds until every site in ``fields`` shows that field ≥ ``since`` (None: never)."""
        start = time.monotonic()
        session = None
        try:
            while time.monotonic() - start < timeout:
                try:
                    if session is None:
                        session = new_secure_session(
                            self.admin,
                            self.cluster.kits.admin_kit,
                            timeout=5.0,
                            server_address=self.cluster.server.admin_address,
                        )
                    seen = {s.name: s for s in session.get_connected_client_list()}
                    if all(
                        name in seen and getattr(seen[name], field) >= since
                        for name, field in fields.items()
                    ):
                        return time.monotonic() - start
                except APIError:
                    pass
                time.sleep(0.2)
            return None
        finally:
            if session is not None:
                session.close()
