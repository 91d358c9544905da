"""calico: the dataplane of Calico's DoNetworking, the WorkloadEndpoint, CHECK, DEL, failures.

Every test has its own datastore file, journal, log, lock and nodename file under
tmp_path (never /var/lib/calico), and its own pool from unique_subnet().
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pycni.calico.datastore import DatastoreSettings, open_datastore
from pycni.calico.endpoints import Endpoints

from ...conftest import NetNS, run_plugin, unique, unique_subnet, unique_subnet6


def calico_conf(tmp: Path, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "log_level": "debug",
        "log_file_path": str(tmp / "log" / "cni.log"),
        "nodename": "node1",
        "nodename_file": str(tmp / "nodename"),
        "nodename_file_optional": True,
        "mtu": 1450,
        "datastore_path": str(tmp / "calico.db"),
        "journal_dir": str(tmp / "journal"),
        "ipam_lock_file": str(tmp / "ipam.lock"),
        "mtu_file": str(tmp / "mtu"),
        "ipam": {"type": "calico-ipam"},
    }
    conf.update(extra)
    return conf


def pool_env(cidr: str, cidr6: str = "") -> dict[str, str]:
    env = {"CALICO_IPV4POOL_CIDR": cidr, "CALICO_IPV4POOL_BLOCK_SIZE": "28"}
    if cidr6:
        env["CALICO_IPV6POOL_CIDR"] = cidr6
    return env


def k8s_args(pod: str, namespace: str = "default") -> str:
    return f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x"


def endpoints(tmp: Path) -> list[dict[str, Any]]:
    with open_datastore(DatastoreSettings(path=str(tmp / "calico.db"))) as store:
        return Endpoints(store).list()


def sysctl(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text().strip()


@pytest.mark.difference("check-whole-attachment")
def test_add_k8s_pod_sets_up_calicos_dataplane(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    cidr, cidr6 = unique_subnet(24), unique_subnet6()
    conf = calico_conf(tmp_path, ipam={"type": "calico-ipam", "assign_ipv6": "true"})
    pod = unique("web-", 12)
    cid = unique("c", 40)
    out = run_plugin(
        plugin_dir / "calico",
        "ADD",
        conf,
        netns=netns.path,
        container_id=cid,
        cni_args=k8s_args(pod),
        env=pool_env(cidr, cidr6.replace("/64", "/48")),
    )
    assert out.returncode == 0, out.stdout
    result = out.json
    host_veth = "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]
    try:
        assert result["interfaces"][1] == {"name": host_veth, "mac": "ee:ee:ee:ee:ee:ee"}
        assert result["interfaces"][0]["name"] == "eth0" and result["interfaces"][0]["sandbox"] == netns.path
        v4 = next(ip for ip in result["ips"] if "." in ip["address"])
        v6 = next(ip for ip in result["ips"] if ":" in ip["address"])
        assert v4["address"].endswith("/32") and v6["address"].endswith("/128") and v4["gateway"] == "169.254.1.1"
        addr4, addr6 = v4["address"].split("/")[0], v6["address"].split("/")[0]
        # Container side: /32, /128, the 169.254.1.1 link route and default routes.
        (link,) = netns.ip_json("addr", "show", "eth0")
        assert link["mtu"] == 1450 and "UP" in link["flags"]
        assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"} == {(addr4, 32), (addr6, 128)}
        routes = netns.ip_json("route", "show")
        assert any(r["dst"] == "169.254.1.1" and r["dev"] == "eth0" and r.get("scope") == "link" for r in routes)
        assert any(r["dst"] == "default" and r["gateway"] == "169.254.1.1" for r in routes)
        routes6 = netns.ip_json("-6", "route", "show")
        assert any(r["dst"] == "default" and r["gateway"].startswith("fe80::") for r in routes6)
        # Host side: MAC, sysctls, /32 route.
        host = json.loads(
            subprocess.run(["ip", "-j", "link", "show", host_veth], capture_output=True, text=True, check=True).stdout
        )[0]
        assert host["address"] == "ee:ee:ee:ee:ee:ee" and host["mtu"] == 1450
        # Both ends with queue length 0 (`ip -j` then omits it), as Calico's DoNetworking makes
        # them (Go netlink's LinkAttrs literal).
        assert "txqlen" not in host and "txqlen" not in link, (host, link)
        for key, value in (("proxy_arp", "1"), ("forwarding", "1"), ("route_localnet", "1")):
            assert sysctl(f"net.ipv4.conf.{host_veth}.{key}") == value
        assert sysctl(f"net.ipv4.neigh.{host_veth}.proxy_delay") == "0"
        assert sysctl(f"net.ipv6.conf.{host_veth}.proxy_ndp") == "1"
        host_routes = json.loads(
            subprocess.run(["ip", "-j", "route", "show", "dev", host_veth], capture_output=True, text=True, check=True).stdout
        )
        assert {"dst": addr4, "scope": "link"} in [{"dst": r["dst"], "scope": r["scope"]} for r in host_routes]
        # The WorkloadEndpoint.
        (wep,) = endpoints(tmp_path)
        assert wep["metadata"]["name"] == f"node1-k8s-{pod.replace('-', '--')}-eth0"
        assert wep["metadata"]["namespace"] == "default"
        assert wep["spec"]["containerID"] == cid and wep["spec"]["interfaceName"] == host_veth
        assert wep["spec"]["mac"] == result["interfaces"][0]["mac"] and wep["spec"]["pod"] == pod
        assert sorted(wep["spec"]["ipNetworks"]) == sorted([f"{addr4}/32", f"{addr6}/128"])
        # CHECK passes, then notices a changed sysctl.
        check_conf = dict(conf, prevResult=result)
        ok = run_plugin(plugin_dir / "calico", "CHECK", check_conf, netns=netns.path, container_id=cid, cni_args=k8s_args(pod))
        assert ok.returncode == 0, ok.stdout
        Path(f"/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp").write_text("0")
        bad = run_plugin(plugin_dir / "calico", "CHECK", check_conf, netns=netns.path, container_id=cid, cni_args=k8s_args(pod))
        assert bad.returncode == 1 and "proxy_arp is 0, expected 1" in bad.json["msg"]
        # The log has one line per step with the container and the pod.
        log = (tmp_path / "log" / "cni.log").read_text()
        for step in ("Calico CNI ADD", f"Added veth {host_veth}", "Calico CNI IPAM assigned addresses"):
            assert any(step in line and f'ContainerID="{cid}"' in line and f'Pod="{pod}"' in line for line in log.splitlines()), (
                step
            )
    finally:
        out = run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid, cni_args=k8s_args(pod))
        assert out.returncode == 0, out.stdout
    assert endpoints(tmp_path) == []
    assert netns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    again = run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid, cni_args=k8s_args(pod))
    assert again.returncode == 0, again.stdout


def test_cni_orchestrator_names_and_reuse(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    conf = calico_conf(tmp_path, cniVersion="0.3.1")
    cid = "pct-" + unique("", 20)
    env = pool_env(unique_subnet(24))
    first = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id=cid, env=env)
    assert first.returncode == 0, first.stdout
    try:
        (wep,) = endpoints(tmp_path)
        assert wep["metadata"]["name"] == f"node1-cni-{cid.replace('-', '--')}-eth0"
        assert wep["spec"]["orchestrator"] == "cni" and wep["spec"]["interfaceName"] == "cali" + cid[:11]
        assert wep["metadata"]["labels"] == {"projectcalico.org/namespace": "default", "projectcalico.org/orchestrator": "cni"}
        # A second ADD of the same container reuses the endpoint (same address, no new veth).
        second = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id=cid, env=env)
        assert second.returncode == 0, second.stdout
        assert second.json["ips"] == first.json["ips"]
        assert len(endpoints(tmp_path)) == 1
    finally:
        assert run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid).returncode == 0


def test_del_of_an_old_sandbox_keeps_the_endpoint_but_releases_its_addresses(
    plugin_dir: Path, make_netns: Any, tmp_path: Path
) -> None:
    conf = calico_conf(tmp_path)
    env = pool_env(unique_subnet(24))
    pod = unique("p", 10)
    old_ns, new_ns = make_netns(), make_netns()
    old = run_plugin(plugin_dir / "calico", "ADD", conf, netns=old_ns.path, container_id="old1", cni_args=k8s_args(pod), env=env)
    assert old.returncode == 0, old.stdout
    new = run_plugin(plugin_dir / "calico", "ADD", conf, netns=new_ns.path, container_id="new1", cni_args=k8s_args(pod), env=env)
    assert new.returncode == 0, new.stdout
    try:
        (wep,) = endpoints(tmp_path)
        assert wep["spec"]["containerID"] == "new1"
        out = run_plugin(plugin_dir / "calico", "DEL", conf, netns=old_ns.path, container_id="old1", cni_args=k8s_args(pod))
        assert out.returncode == 0, out.stdout
        (wep,) = endpoints(tmp_path)
        assert wep["spec"]["containerID"] == "new1"
        with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
            assert store.get("/calico/ipam/v2/handle/k8s-pod-network.old1") is None
            assert store.get("/calico/ipam/v2/handle/k8s-pod-network.new1") is not None
    finally:
        run_plugin(plugin_dir / "calico", "DEL", conf, netns=new_ns.path, container_id="new1", cni_args=k8s_args(pod))
    assert endpoints(tmp_path) == []


@pytest.mark.reference
def test_calico_with_host_local_ipam(plugin_dir: Path, reference_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    """host-local (for now Debian's Go host-local) hands out the address; calico programs it as /32."""
    cidr = unique_subnet(24)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(plugin_dir / "calico", bin_dir / "calico")
    os.symlink(reference_dir / "host-local", bin_dir / "host-local")
    conf = calico_conf(tmp_path, ipam={"type": "host-local", "subnet": cidr, "dataDir": str(tmp_path / "hl")})
    pod = unique("hl", 10)
    out = run_plugin(
        bin_dir / "calico", "ADD", conf, netns=netns.path, container_id="hl1", cni_args=k8s_args(pod), cni_path=str(bin_dir)
    )
    assert out.returncode == 0, out.stdout
    try:
        address = out.json["ips"][0]["address"]
        assert address.endswith("/32") and address.split("/")[0].startswith(cidr.rsplit(".", 2)[0])
        assert list((tmp_path / "hl" / "k8s-pod-network").glob(address.split("/")[0]))
    finally:
        out = run_plugin(
            bin_dir / "calico", "DEL", conf, netns=netns.path, container_id="hl1", cni_args=k8s_args(pod), cni_path=str(bin_dir)
        )
        assert out.returncode == 0, out.stdout
    assert not list((tmp_path / "hl" / "k8s-pod-network").glob(address.split("/")[0]))


def test_failed_add_leaves_nothing_behind(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    conf = calico_conf(tmp_path)
    env = pool_env(unique_subnet(24))
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")  # the name calico needs is taken
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id="busy1", env=env)
    assert out.returncode == 1 and out.json["code"] == 102 and "eth0" in out.json["msg"]
    assert endpoints(tmp_path) == []
    with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
        assert store.list("/calico/ipam/v2/handle/") == []
    assert subprocess.run(["ip", "link", "show", "calibusy1"], capture_output=True, check=False).returncode != 0


def test_configuration_errors(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    kube = run_plugin(plugin_dir / "calico", "ADD", calico_conf(tmp_path, datastore_type="kubernetes"), netns=netns.path)
    assert kube.json["code"] == 7 and "embedded" in kube.json["msg"] and "etcdv3" in kube.json["msg"]
    missing = run_plugin(plugin_dir / "calico", "ADD", calico_conf(tmp_path, nodename_file_optional=False), netns=netns.path)
    assert missing.json["code"] == 7
    assert str(tmp_path / "nodename") in missing.json["msg"] and "nodename_file" in missing.json["details"]
    env = pool_env(unique_subnet(24))
    nopool = calico_conf(tmp_path, ipam={"type": "calico-ipam", "ipv4_pools": ["no-such-pool"]})
    out = run_plugin(plugin_dir / "calico", "ADD", nopool, netns=netns.path, env=env)
    assert out.json["code"] == 7 and '"no-such-pool" does not exist' in out.json["msg"]
    badname = run_plugin(plugin_dir / "calico", "ADD", calico_conf(tmp_path, name="bad name!"), netns=netns.path)
    assert badname.json["code"] in (4, 7)
    badlevel = run_plugin(plugin_dir / "calico", "ADD", calico_conf(tmp_path, log_level="loud"), netns=netns.path)
    assert badlevel.json["code"] == 7 and "log_level" in badlevel.json["msg"]


def test_disabled_pool_is_named(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    cidr = unique_subnet(24)
    with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
        from pycni.calico.pools import Pools

        Pools(store).create({"metadata": {"name": "off"}, "spec": {"cidr": cidr, "disabled": True}})
    conf = calico_conf(tmp_path, ipam={"type": "calico-ipam", "ipv4_pools": ["off"]})
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path)
    assert out.json["code"] == 7 and "off" in out.json["msg"] and "disabled" in out.json["msg"]


def test_mtu_from_file_and_route_conflict(plugin_dir: Path, make_netns: Any, tmp_path: Path) -> None:
    (tmp_path / "mtu").write_text("1400\n")
    conf = calico_conf(tmp_path, mtu=0)
    env = pool_env(unique_subnet(24))
    a, b = make_netns(), make_netns()
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=a.path, container_id="mtu1", env=env)
    assert out.returncode == 0, out.stdout
    try:
        assert a.ip_json("link", "show", "eth0")[0]["mtu"] == 1400
        address = out.json["ips"][0]["address"]
        # Another interface owning the next address's /32 route is an error naming it.
        nxt = ipaddress.ip_interface(address).ip + 1
        victim = unique("pctv", 12)
        subprocess.run(["ip", "link", "add", victim, "type", "veth", "peer", "name", victim + "p"], check=True)
        try:
            subprocess.run(["ip", "link", "set", victim, "up"], check=True)
            subprocess.run(["ip", "route", "add", f"{nxt}/32", "dev", victim], check=True)
            second = run_plugin(plugin_dir / "calico", "ADD", conf, netns=b.path, container_id="mtu2", env=env)
            assert second.returncode == 1 and victim in second.json["msg"], second.stdout
            assert len(endpoints(tmp_path)) == 1
        finally:
            subprocess.run(["ip", "link", "del", victim], check=False)
    finally:
        run_plugin(plugin_dir / "calico", "DEL", conf, netns=a.path, container_id="mtu1")


def test_gc_collects_leaked_endpoints_and_their_addresses(plugin_dir: Path, make_netns: Any, tmp_path: Path) -> None:
    """A container whose DEL never came: GC (with it missing from cni.dev/valid-attachments)
    deletes its WorkloadEndpoint and releases its addresses; valid containers, other nodes
    and other networks keep theirs."""
    from pycni.calico.ipam import IPAM

    conf = calico_conf(tmp_path, cniVersion="1.1.0")
    env = pool_env(unique_subnet(24))
    runs = {
        "keep1": conf,
        "leak1": conf,
        "other1": dict(conf, nodename="node2"),
        "net1": dict(conf, name="othernet"),
    }
    spaces = {cid: make_netns() for cid in runs}
    added = {}
    try:
        for cid, c in runs.items():
            out = run_plugin(plugin_dir / "calico", "ADD", c, netns=spaces[cid].path, container_id=cid, env=env)
            assert out.returncode == 0, out.stdout
            added[cid] = ipaddress.ip_interface(out.json["ips"][0]["address"]).ip
        valid = {"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]}
        out = run_plugin(plugin_dir / "calico", "GC", dict(conf, **valid))
        assert out.returncode == 0, out.stdout
        assert sorted(w["spec"]["containerID"] for w in endpoints(tmp_path)) == ["keep1", "net1", "other1"]
        with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
            handles = sorted(kv.key.rsplit("/", 1)[1] for kv in store.list("/calico/ipam/v2/handle/"))
            assert handles == ["k8s-pod-network.keep1", "k8s-pod-network.other1", "othernet.net1"]
            ipam = IPAM(store)
            assert ipam.assignment(added["leak1"]) is None
            for cid in ("keep1", "other1", "net1"):
                held = ipam.assignment(added[cid])
                assert held is not None and held.handle_id.endswith(f".{cid}")
        # GC again changes nothing; the leaked container's late DEL still succeeds.
        assert run_plugin(plugin_dir / "calico", "GC", dict(conf, **valid)).returncode == 0
        assert len(endpoints(tmp_path)) == 3
    finally:
        for cid, c in runs.items():
            out = run_plugin(plugin_dir / "calico", "DEL", c, netns=spaces[cid].path, container_id=cid)
            assert out.returncode == 0, out.stdout
    assert endpoints(tmp_path) == []


def test_check_reports_every_difference(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    conf = calico_conf(tmp_path, ipam={"type": "calico-ipam", "assign_ipv6": "true"})
    env = pool_env(unique_subnet(24), unique_subnet6().replace("/64", "/48"))
    cid = unique("chk", 12)
    host_veth = "cali" + cid[:11]
    other = unique("pcto", 12)
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id=cid, env=env)
    assert out.returncode == 0, out.stdout
    try:
        check_conf = dict(conf, prevResult=out.json)
        ok = run_plugin(plugin_dir / "calico", "CHECK", check_conf, netns=netns.path, container_id=cid)
        assert ok.returncode == 0, ok.stdout
        address = out.json["ips"][0]["address"]
        subprocess.run(["ip", "link", "add", other, "type", "veth", "peer", "name", other + "p"], check=True)
        subprocess.run(["ip", "link", "set", other, "up"], check=True)
        subprocess.run(["ip", "route", "replace", address, "dev", other], check=True)
        subprocess.run(["ip", "link", "set", host_veth, "mtu", "1400"], check=True)
        netns.run("ip", "-6", "route", "del", "default")
        netns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        bad = run_plugin(plugin_dir / "calico", "CHECK", check_conf, netns=netns.path, container_id=cid)
        assert bad.returncode == 1 and bad.json["code"] == 7
        for problem in (
            f"route {address} goes to {other}, not {host_veth}",
            f"{host_veth} has MTU 1400, expected 1450",
            "route ::/0 via fe80::ecee:eeff:feee:eeee dev eth0 is missing",
            "net/ipv4/ip_forward is 1, expected 0",
        ):
            assert problem in bad.json["msg"], bad.json["msg"]
    finally:
        subprocess.run(["ip", "link", "del", other], capture_output=True, check=False)
        assert run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid).returncode == 0


def test_a_leftover_host_veth_is_replaced(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    """A host veth of the same name left by an earlier sandbox (as Calico: deleted, then made anew)."""
    conf = calico_conf(tmp_path)
    cid = unique("old", 12)
    host_veth = "cali" + cid[:11]
    subprocess.run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", unique("pctp", 12)], check=True)
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id=cid, env=pool_env(unique_subnet(24)))
    try:
        assert out.returncode == 0, out.stdout
        (host,) = json.loads(subprocess.run(["ip", "-j", "link", "show", host_veth], capture_output=True, check=True).stdout)
        assert host["address"] == "ee:ee:ee:ee:ee:ee" and host["link_netnsid"] is not None
        assert f"Cleaning old hostVeth: {host_veth}" in (tmp_path / "log" / "cni.log").read_text()
    finally:
        assert run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid).returncode == 0
    assert subprocess.run(["ip", "link", "show", host_veth], capture_output=True, check=False).returncode != 0


def test_ipv6_only_workload(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    """No IPv4: no 169.254.1.1 route and no IPv4 sysctls; the default route goes via the host
    veth's link-local address, the host routes the /128 to the veth."""
    conf = calico_conf(tmp_path, ipam={"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": "true"})
    cid = unique("v6", 12)
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=netns.path, container_id=cid,
                     env={"CALICO_IPV6POOL_CIDR": unique_subnet6().replace("/64", "/48")})  # fmt: skip
    assert out.returncode == 0, out.stdout
    try:
        (ip,) = out.json["ips"]
        assert ip["address"].endswith("/128") and ip["gateway"] == "fe80::ecee:eeff:feee:eeee"
        assert netns.ip_json("-4", "route", "show") == []
        (default,) = netns.ip_json("-6", "route", "show", "default")
        assert default["gateway"] == "fe80::ecee:eeff:feee:eeee" and default["dev"] == "eth0"
        host_veth = "cali" + cid[:11]
        routes = json.loads(subprocess.run(["ip", "-j", "-6", "route", "show", "dev", host_veth],
                                           capture_output=True, text=True, check=True).stdout)  # fmt: skip
        assert ip["address"].split("/")[0] in [r["dst"] for r in routes]
        assert sysctl(f"net.ipv6.conf.{host_veth}.proxy_ndp") == "1"
        check = run_plugin(plugin_dir / "calico", "CHECK", dict(conf, prevResult=out.json), netns=netns.path, container_id=cid)
        assert check.returncode == 0, check.stdout
    finally:
        assert run_plugin(plugin_dir / "calico", "DEL", conf, netns=netns.path, container_id=cid).returncode == 0
