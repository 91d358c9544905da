"""calicoctl: Calico's table layouts, resource YAML/JSON, and the ipam commands."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pycni.calico.calicoctl import tables
from pycni.calico.datastore import DatastoreSettings, open_datastore
from pycni.calico.ipam import IPAM

from .conftest import EtcdServer

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def ctl(tmp: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "DATASTORE_PATH": str(tmp / "calico.db")}
    return subprocess.run([str(VENV_BIN / "calicoctl"), *argv], input=stdin, capture_output=True, text=True, env=env, check=False)


POOL_YAML = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 10.77.0.0/24
  blockSize: 28
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.78.0.0/24
  disabled: true
  nodeSelector: rack == "2"
"""


def test_boxed_table_is_tablewriters_layout() -> None:
    out = tables.boxed_table(
        ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        [["IP Pool", "192.168.0.0/16", "65536", "1 (0%)", "65535 (100%)"]],
    )
    assert out == (
        "+----------+----------------+-----------+------------+--------------+\n"
        "| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |\n"
        "+----------+----------------+-----------+------------+--------------+\n"
        "| IP Pool  | 192.168.0.0/16 |     65536 | 1 (0%)     | 65535 (100%) |\n"
        "+----------+----------------+-----------+------------+--------------+\n"
    )


def test_ps_table_is_tabwriters_layout() -> None:
    assert tables.ps_table(["NAME", "CIDR"], [["p", "10.0.0.0/8"]]) == "NAME   CIDR         \np      10.0.0.0/8   \n\n"


def test_create_get_apply_delete_pools(tmp_path: Path) -> None:
    (tmp_path / "pools.yaml").write_text(POOL_YAML)
    out = ctl(tmp_path, "create", "-f", str(tmp_path / "pools.yaml"))
    assert out.returncode == 0 and out.stdout == "Successfully created 2 'IPPool' resource(s)\n", out.stderr
    again = ctl(tmp_path, "create", "-f", str(tmp_path / "pools.yaml"))
    assert again.returncode == 1 and "resource already exists: IPPool(pool-a)" in again.stderr
    table = ctl(tmp_path, "get", "ippools", "-o", "wide").stdout
    assert table.splitlines()[0].split() == [
        "NAME",
        "CIDR",
        "NAT",
        "IPIPMODE",
        "VXLANMODE",
        "DISABLED",
        "DISABLEBGPEXPORT",
        "SELECTOR",
    ]
    assert table.splitlines()[1].split() == ["pool-a", "10.77.0.0/24", "true", "Never", "Never", "false", "false", "all()"]
    assert table.splitlines()[2].split()[:6] == ["pool-b", "10.78.0.0/24", "false", "Never", "Never", "true"]
    one = json.loads(ctl(tmp_path, "get", "ippool", "pool-a", "-o", "json").stdout)
    assert list(one) == ["kind", "apiVersion", "metadata", "spec"]
    assert one["kind"] == "IPPool" and one["spec"] == {
        "cidr": "10.77.0.0/24",
        "vxlanMode": "Never",
        "ipipMode": "Never",
        "natOutgoing": True,
        "blockSize": 28,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
    }
    listed = yaml.safe_load(ctl(tmp_path, "get", "ippools", "-o", "yaml").stdout)
    assert listed["kind"] == "IPPoolList" and [i["metadata"]["name"] for i in listed["items"]] == ["pool-a", "pool-b"]
    # apply changes pool-a (natOutgoing off) from JSON on stdin; the CIDR is immutable.
    changed = json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "pool-a"},
            "spec": {"cidr": "10.77.0.0/24", "blockSize": 28},
        }
    )
    assert ctl(tmp_path, "apply", "-f", "-", stdin=changed).returncode == 0
    assert json.loads(ctl(tmp_path, "get", "ippool", "pool-a", "-o", "json").stdout)["spec"]["natOutgoing"] is False
    moved = changed.replace("10.77.0.0/24", "10.79.0.0/24")
    bad = ctl(tmp_path, "apply", "-f", "-", stdin=moved)
    assert bad.returncode == 1 and "cidr cannot be changed" in bad.stderr
    overlap = ctl(tmp_path, "create", "-f", "-", stdin=moved.replace("pool-a", "pool-c").replace("10.79.0.0/24", "10.77.0.0/25"))
    assert overlap.returncode == 1 and "overlaps" in overlap.stderr
    assert ctl(tmp_path, "delete", "ippool", "pool-b").stdout == "Successfully deleted 1 'IPPool' resource(s)\n"
    assert ctl(tmp_path, "delete", "-f", str(tmp_path / "pools.yaml")).returncode == 1  # pool-b is gone


def test_ipam_show_check_release(tmp_path: Path) -> None:
    with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
        ipam = IPAM(store)
        ipam.pools.create({"metadata": {"name": "p"}, "spec": {"cidr": "10.80.0.0/24", "blockSize": 26}})
        v4, _ = ipam.auto_assign(3, 0, "net.leaky", {"node": "n1", "pod": "web", "namespace": "default", "timestamp": "t"}, "n1")
    assert v4 is not None
    show = ctl(tmp_path, "ipam", "show", "--show-blocks").stdout
    width = len(str(v4.ips[0].network))
    assert show.splitlines()[3] == f"| IP Pool  | {'10.80.0.0/24'.ljust(width)} |       256 | 3 (1%)     | 253 (99%) |"
    assert show.splitlines()[4] == f"| Block    | {v4.ips[0].network} |        64 | 3 (5%)     | 61 (95%)  |"
    ip = str(v4.ips[0].ip)
    detail = ctl(tmp_path, "ipam", "show", "--ip", ip).stdout
    assert detail.startswith(f"IP {ip} is in use\nAttributes:\n") and "  handle: net.leaky" in detail and "  pod: web" in detail
    check = ctl(tmp_path, "ipam", "check", "--show-problem-ips").stdout
    assert "Found 3 IPs that are allocated in IPAM but not actually in use." in check
    assert f"  {ip} leaked; attrs" in check and "Check complete; found 3 problems." in check
    assert ctl(tmp_path, "ipam", "release", "--ip", ip).stdout == f"Successfully released IP address {ip}\n"
    again = ctl(tmp_path, "ipam", "release", "--ip", ip)
    assert again.returncode == 1 and f"IP address {ip} is not assigned" in again.stderr
    assert ctl(tmp_path, "ipam", "show", "--ip", ip).stdout == f"{ip} is not assigned\n"
    config = ctl(tmp_path, "ipam", "show", "--show-configuration").stdout
    assert "| StrictAffinity     | false |" in config
    assert ctl(tmp_path, "ipam", "configure", "--strictaffinity=true").returncode == 0
    assert "| StrictAffinity     | true  |" in ctl(tmp_path, "ipam", "show", "--show-configuration").stdout


@pytest.mark.parametrize("argv", [["get", "frobs"], ["ipam", "release", "--ip", "nonsense"]])
def test_errors_are_clear(tmp_path: Path, argv: list[str]) -> None:
    out = ctl(tmp_path, *argv)
    assert out.returncode == 1 and out.stderr.strip() and "Traceback" not in out.stderr


def test_kubernetes_datastore_is_refused(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "DATASTORE_TYPE": "kubernetes"}
    out = subprocess.run([str(VENV_BIN / "calicoctl"), "get", "ippools"], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1 and "available datastores" in out.stderr


def _endpoint(name: str, namespace: str, node: str, address: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"orchestrator": "k8s", "node": node, "pod": name, "endpoint": "eth0", "ipNetworks": [address]},
    }


def test_etcd_from_the_environment_and_a_config_file_and_every_ipam_problem(etcd: EtcdServer, tmp_path: Path) -> None:
    """calicoctl on etcd (ETCD_ENDPOINTS, then a CalicoAPIConfig file), and what `ipam check`
    finds besides leaks: an address in use with no allocation, a handle with no addresses."""
    from pycni.calico import model
    from pycni.calico.endpoints import Endpoints

    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=etcd.endpoint)) as store:
        ipam = IPAM(store)
        ipam.pools.create({"metadata": {"name": "p"}, "spec": {"cidr": "10.81.0.0/24", "blockSize": 26}})
        v4, _ = ipam.auto_assign(1, 0, "net.web", {"node": "n1", "pod": "web", "namespace": "prod", "timestamp": "t"}, "n1")
        assert v4 is not None
        block = v4.ips[0].network
        Endpoints(store).create(_endpoint("n1-k8s-web-eth0", "prod", "n1", f"{v4.ips[0].ip}/32"))
        Endpoints(store).create(_endpoint("n1-k8s-ghost-eth0", "prod", "n1", "10.81.0.200/32"))
        Endpoints(store).create(_endpoint("n1-k8s-db-eth0", "default", "n1", "10.81.0.201/32"))
        store.create(model.handle_key("net.orphan"), model.Handle(block={str(block): 1}).to_json())
    env = {"PATH": os.environ.get("PATH", ""), "DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": etcd.endpoint}
    check = subprocess.run([str(VENV_BIN / "calicoctl"), "ipam", "check", "--show-all-ips"], env=env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr
    for line in (
        "Found 0 IPs that are allocated in IPAM but not actually in use.",
        "  10.81.0.200 in use by Workload(prod/n1-k8s-ghost-eth0) and in active IPAM pool but has no IPAM allocation.",
        "Found 2 in-use IPs that are in active IP pools but have no corresponding IPAM allocation.",
        "  net.orphan doesn't have any active IPs.",
        "Found 1 handles with no matching IPs (and 1 handles with matches).",
        "Check complete; found 3 problems.",
    ):
        assert line in check.stdout.splitlines(), check.stdout
    config = tmp_path / "calicoctl.cfg"
    config.write_text(
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\n"
        f"spec:\n  datastoreType: etcdv3\n  etcdEndpoints: {etcd.endpoint}\n"
    )
    bare = {"PATH": os.environ.get("PATH", "")}
    got = subprocess.run([str(VENV_BIN / "calicoctl"), "get", "workloadendpoints", "-n", "prod", "-o", "yaml", "-c", str(config)],
                         env=bare, capture_output=True, text=True, check=False)  # fmt: skip
    assert got.returncode == 0, got.stderr
    listed = yaml.safe_load(got.stdout)
    assert listed["kind"] == "WorkloadEndpointList"
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["n1-k8s-ghost-eth0", "n1-k8s-web-eth0"]


NODE_YAML = """
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-a
spec:
  bgp:
    ipv4Address: 10.0.0.1/24
"""


def test_label_sets_updates_refuses_and_removes(tmp_path: Path) -> None:
    (tmp_path / "node.yaml").write_text(NODE_YAML)
    assert ctl(tmp_path, "create", "-f", str(tmp_path / "node.yaml")).returncode == 0
    out = ctl(tmp_path, "label", "nodes", "node-a", "rack=1")
    assert out.returncode == 0 and out.stdout == "Successfully set label rack on nodes node-a\n", out.stderr
    again = ctl(tmp_path, "label", "nodes", "node-a", "rack=2")
    assert again.returncode == 1
    assert "key rack is already present. please use '--overwrite' to set a new value" in again.stderr
    over = ctl(tmp_path, "label", "nodes", "node-a", "rack=2", "--overwrite")
    assert over.stdout == "Successfully updated label rack on nodes node-a\n"
    node = json.loads(ctl(tmp_path, "get", "node", "node-a", "-o", "json").stdout)
    assert node["metadata"]["labels"] == {"rack": "2"}
    assert node["spec"]["bgp"]["ipv4Address"] == "10.0.0.1/24"
    removed = ctl(tmp_path, "label", "nodes", "node-a", "rack", "--remove")
    assert removed.stdout == "Successfully removed label rack from nodes node-a\n"
    missing = ctl(tmp_path, "label", "nodes", "node-a", "rack", "--remove")
    assert "cannot remove label of nodes node-a, key rack does not exist" in missing.stderr
    assert "nodes nobody not found" in ctl(tmp_path, "label", "nodes", "nobody", "a=b").stderr
    wide = ctl(tmp_path, "get", "nodes", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "ASN", "IPV4", "IPV6"]
    assert wide[1].split() == ["node-a", "(64512)", "10.0.0.1/24"]
    assert ctl(tmp_path, "delete", "node", "node-a").stdout == "Successfully deleted 1 'Node' resource(s)\n"
    assert ctl(tmp_path, "get", "nodes").stdout == "NAME   \n\n"


def test_a_bad_document_in_a_file_writes_none_of_it(tmp_path: Path) -> None:
    bad = POOL_YAML + "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-c}\nspec: {cidr: nonsense}\n"
    (tmp_path / "pools.yaml").write_text(bad)
    out = ctl(tmp_path, "apply", "-f", str(tmp_path / "pools.yaml"))
    assert out.returncode == 1 and "nonsense" in out.stderr
    assert ctl(tmp_path, "get", "ippools").stdout == "NAME   CIDR   SELECTOR   \n\n"
