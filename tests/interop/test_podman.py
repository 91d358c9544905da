"""Our plugins under a real libcni client: Debian's podman (CNI backend, runc).

The plugin directory podman searches holds the reference plugins with ours laid over
them, so every plugin pycni ships is ours and the rest are the reference's.
Podman keeps its images, containers and networks under this test's own directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import delete_link, unique, unique_subnet

pytestmark = pytest.mark.reference

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/pct-busybox:latest"


@dataclass
class Podman:
    base: Path
    plugins: Path
    netdir: Path
    ours: list[str]

    def __call__(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [
            "podman",
            "--root",
            str(self.base / "root"),
            "--runroot",
            str(self.base / "runroot"),
            "--storage-driver",
            "vfs",
            *argv,
        ]
        env = dict(os.environ, CONTAINERS_CONF=str(self.base / "containers.conf"))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(argv)} failed: {proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path, reference_dir: Path) -> Iterator[Podman]:
    if not shutil.which("podman") or not os.path.exists(BUSYBOX):
        pytest.fail("podman and busybox-static are needed: run `make test`, which installs them")
    base = tmp_path_factory.mktemp("podman")
    plugins = base / "plugins"
    plugins.mkdir()
    for name in os.listdir(reference_dir):
        os.symlink(reference_dir / name, plugins / name)
    ours = sorted(os.listdir(plugin_dir))
    for name in ours:
        if (plugins / name).exists():
            (plugins / name).unlink()
        shutil.copy(plugin_dir / name, plugins / name)
    netdir = base / "net.d"
    netdir.mkdir()
    # No default ulimits: runc may not raise them in this sandbox (no CAP_SYS_RESOURCE).
    (base / "containers.conf").write_text(
        "[containers]\ndefault_ulimits = []\n"
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{plugins}"]\nnetwork_config_dir = "{netdir}"\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    rootfs = base / "image.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "ip", "ping", "sleep", "cat", "nc", "httpd", "wget"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    pod = Podman(base, plugins, netdir, ours)
    pod("import", str(rootfs), IMAGE)
    try:
        yield pod
    finally:
        pod("rm", "-a", "-f", check=False)
        pod("system", "reset", "-f", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_podman_runs_a_container_on_our_plugins(podman: Podman, tmp_path: Path) -> None:
    """podman's own conflist (bridge, host-local, portmap, firewall, tuning), with a test subnet."""
    name = unique("pct-pod-", 20)
    bridge = unique("pctpd")
    subnet = unique_subnet()
    gateway = subnet.replace(".0/24", ".1")
    conf = {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                    "dataDir": str(tmp_path / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "tuning"},
        ],
    }
    (podman.netdir / f"{name}.conflist").write_text(json.dumps(conf))
    try:
        out = podman("run", "--rm", "--network", name, IMAGE, "sh", "-c", f"ip -4 -o addr show eth0; ping -c1 -W2 {gateway}")
        assert f"inet {subnet[:-5]}" in out.stdout, out.stdout
        assert "1 packets received" in out.stdout, out.stdout
        # podman ran DEL when the container went away: nothing of it is left.
        leftovers = [f for f in os.listdir(tmp_path / "ipam" / name) if f[0].isdigit()]
        assert leftovers == []
        assert not [f for f in os.listdir("/var/lib/cni/results") if f.startswith(name)]
    finally:
        (podman.netdir / f"{name}.conflist").unlink()
        delete_link(bridge)
