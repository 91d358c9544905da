"""Fixtures of the interop tests: Go's libcni as a runtime (a small client built from Debian's
libcni sources), a client namespace and a TCP server in a pod, as the meta plugins' tests
have them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..plugins.meta.conftest import client_ns, tcp_server  # noqa: F401 - fixtures re-exported

GOPATH_SYSTEM = "/usr/share/gocode"


@pytest.fixture(scope="session")
def libcni_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("go") or not os.path.isdir(f"{GOPATH_SYSTEM}/src/github.com/containernetworking/cni/libcni"):
        pytest.fail("golang-go and golang-github-appc-cni-dev are needed: run `make test`, which installs them")
    work = tmp_path_factory.mktemp("go")
    src = work / "src" / "libcnidriver"
    src.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("libcni_driver.go"), src / "main.go")
    out = work / "libcni_driver"
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{work}:{GOPATH_SYSTEM}", GOCACHE=str(work / "cache"), GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(out), "libcnidriver"], cwd=work, env=env, check=True, capture_output=True)
    return out


def drive(driver: Path, command: str, netdir: Path, net: str, netns: str, cid: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(driver), command, str(netdir), net, netns, cid, "eth0"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
