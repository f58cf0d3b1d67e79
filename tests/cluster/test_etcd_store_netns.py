"""The cluster on etcd end to end: etcd (Debian's etcd-server) on its own namespace host,
managers started with `node init --store etcd://...` / `node join --store ...`, a worker,
a service whose tasks run; a manager restarted gets its state back from etcd; two managers
on one etcd with one leader at a time and the duties moving when the leader dies; etcd lost
and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from support.etcd import ETCD, Etcd, free_port
from support.labutil import Lab
from support.netns import NetnsLab, available
from support.polling import until

pytestmark = pytest.mark.root


class EtcdLab(Lab):
    etcd: Etcd

    def start_etcd(self) -> None:
        def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
            return self.lab.spawn("e1", argv).popen

        def probe(url: str) -> bool:
            r = self.lab.run("e1", ["curl", "-s", "-m", "1", url], check=False)
            return '"health":"true"' in r.stdout

        self.etcd = Etcd(self.lab.addr("e1"), spawn=spawn, probe=probe)
        self.etcd.start()

    def running_on(self, name: str, host: str) -> list[dict[str, object]]:
        tasks = json.loads(self.cli_ok("service", "ps", name, "--format", "json", host=host))
        return [t for t in tasks if t["State"] == "running" and t["DesiredState"] == "running"]

    def doctor_store(self, host: str) -> str:
        out = self.cli_ok("doctor", host=host)
        return next((x for x in out.splitlines() if x.startswith("Cluster store:")), out)


@pytest.fixture(scope="module")
def lab() -> Iterator[EtcdLab]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} missing (Debian's etcd-server: scripts/install-test-deps)")
    nl = NetnsLab()
    c = EtcdLab(nl)
    try:
        for h in ("e1", "m1", "m2", "w1"):
            nl.add_host(h)
        c.start_etcd()
        yield c
    finally:
        try:
            c.close()
            if getattr(c, "etcd", None) is not None:
                c.etcd.close()
        finally:
            nl.close()


def test_init_join_service_restart_and_failover(lab: EtcdLab) -> None:
    ip = lab.lab.addr
    url = f"etcd://{ip('e1')}:2379"
    lab.start(
        "m1", "init", "--advertise-addr", ip("m1"), "--hostname", "m1",
        "--dispatcher-heartbeat", "1s", "--store", url, "--store-lease", "3s",
    )  # fmt: skip
    lab.ids = list(lab.node_ids("m1").values())
    assert f"Cluster store: etcd {url}" in lab.doctor_store("m1")
    assert "lease 3s" in lab.doctor_store("m1")
    assert "healthy" in lab.doctor_store("m1")
    token = lab.ok("m1", "join-token", "-q", "worker").strip()
    lab.start(
        "w1", "join", "--token", token, f"{ip('m1')}:2377", "--advertise-addr", ip("w1"),
        "--hostname", "w1",  # no --store: a promotion takes the URL from the managers
    )  # fmt: skip
    until(lambda: lab.ls("m1").get("w1", {}).get("Status") == "Ready", 30, "w1 Ready")
    lab.ids = list(lab.node_ids("m1").values())

    out = lab.cli_ok(
        "service", "create", "--name", "naps", "--replicas", "2", "--", "sleep", "1000"
    )  # fmt: skip
    assert "converged" in out
    until(lambda: len(lab.running("naps")) == 2, 30, "2 tasks running")

    # the manager restarted: its state comes back from etcd (snapshot + log)
    lab.kill("m1")
    lab.start("m1", "run")
    until(lambda: len(lab.running("naps")) == 2, 30, "naps back after the restart")
    assert "lease 3s" in lab.doctor_store("m1")  # kept in node.json
    until(lambda: lab.ls("m1").get("w1", {}).get("Status") == "Ready", 30, "w1 Ready again")

    # a second manager on the same etcd: one leader at a time
    mtoken = lab.ok("m1", "join-token", "-q", "manager").strip()
    lab.start(
        "m2", "join", "--token", mtoken, f"{ip('m1')}:2377", "--advertise-addr", ip("m2"),
        "--hostname", "m2",  # no --store: the join reply says where the log is
    )  # fmt: skip
    lab.ids = list(lab.node_ids("m1").values())

    def statuses(host: str) -> dict[str, str]:
        return {h: n["ManagerStatus"] for h, n in lab.ls(host).items() if n["ManagerStatus"]}

    until(lambda: statuses("m2") == {"m1": "Leader", "m2": "Reachable"}, 30, "m2 sees m1 lead")
    assert statuses("m1") == {"m1": "Leader", "m2": "Reachable"}
    assert {t["Name"] for t in lab.running("naps")} == {"naps.1", "naps.2"}

    # the leader dies: m2 takes the duties once m1's lease expires
    lab.kill("m1")
    until(lambda: statuses("m2").get("m2") == "Leader", 30, "m2 leads")
    lab.cli_ok("service", "scale", "naps=3", host="m2")
    until(lambda: len(lab.running_on("naps", "m2")) == 3, 40, "3 tasks after the failover")

    # etcd lost: writes fail fast and clearly; the manager recovers when it returns
    lab.etcd.stop()
    r = lab.cli("service", "scale", "naps=1", host="m2", timeout=30)
    assert r.returncode != 0
    assert "etcd" in r.stderr and "unreachable" in r.stderr, r.stderr
    assert "unreachable" in lab.doctor_store("m2")
    lab.etcd.start()
    until(lambda: lab.cli("service", "scale", "naps=1", host="m2").returncode == 0, 30,
          "writes again once etcd is back")  # fmt: skip
    until(lambda: len(lab.running_on("naps", "m2")) == 1, 30, "scaled down")

    # a worker joined without --store, promoted: it starts its replica on the cluster's etcd
    lab.cli_ok("node", "promote", "w1", host="m2")
    until(lambda: statuses("m2").get("w1") == "Reachable", 40, "w1 a manager on etcd")
    until(lambda: "Cluster store: etcd" in lab.doctor_store("w1"), 20, "w1's store is etcd")

    # a manager leaves: its membership is its etcd lease, gone with it; the leader keeps going
    lab.ok("w1", "leave")
    until(lambda: statuses("m2").get("w1") != "Reachable", 20, "w1 no longer a reachable manager")
    assert statuses("m2").get("m2") == "Leader"
    lab.cli_ok("service", "scale", "naps=2", host="m2")


def test_init_with_etcd_unreachable_names_the_endpoint(lab: EtcdLab) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshkit", "node", "init", "--store", "etcd://127.0.0.1:9",
         "--data-dir", str(lab.root / "bad"), "--host", str(lab.root / "bad.sock"),
         "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "http://127.0.0.1:9" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
