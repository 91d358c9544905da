"""`pycni`, the cnitool drop-in: verbs, environment, output, container IDs, errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import NetNS


def pycni(*argv: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    executable = Path(os.sys.executable).parent / "pycni"
    full = {"PATH": os.environ["PATH"]}
    full.update(env or {})
    return subprocess.run([str(executable), *argv], capture_output=True, text=True, env=full, check=check)


@pytest.fixture
def netconf(tmp_path: Path) -> Path:
    directory = tmp_path / "net.d"
    directory.mkdir()
    (directory / "10-lo.conflist").write_text(
        json.dumps({"cniVersion": "1.1.0", "name": "lonet", "plugins": [{"type": "loopback"}]})
    )
    return directory


def cli_env(netconf: Path, plugin_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"NETCONFPATH": str(netconf), "CNI_PATH": str(plugin_dir), "CNI_CACHE_DIR": str(tmp_path / "cache")}
    env.update(extra)
    return env


def test_add_check_del(netconf: Path, plugin_dir: Path, tmp_path: Path, netns: NetNS) -> None:
    env = cli_env(netconf, plugin_dir, tmp_path)
    add = pycni("add", "lonet", netns.path, env=env)
    assert add.returncode == 0, add.stderr
    result: dict[str, Any] = json.loads(add.stdout)
    assert result["interfaces"][0]["name"] == "lo"
    assert add.stdout.startswith('{\n    "cniVersion": "1.1.0",') and not add.stdout.endswith("\n")
    cid = "cnitool-" + hashlib.sha512(netns.path.encode()).digest()[:10].hex()
    assert (tmp_path / "cache" / "results" / f"lonet-{cid}-eth0").exists()
    assert pycni("check", "lonet", netns.path, env=env).returncode == 0
    assert pycni("status", "lonet", env=env).returncode == 0
    deleted = pycni("del", "lonet", netns.path, env=env)
    assert deleted.returncode == 0 and deleted.stdout == ""
    assert not (tmp_path / "cache" / "results" / f"lonet-{cid}-eth0").exists()


def test_container_id_matches_cnitool() -> None:
    from pycni.cli.main import container_id_for

    # sha512("/var/run/netns/test-cni")[:10], as cnitool computes it
    assert container_id_for("/var/run/netns/test-cni") == "cnitool-" + hashlib.sha512(b"/var/run/netns/test-cni").hexdigest()[:20]
    assert len(container_id_for("x")) == len("cnitool-") + 20


@pytest.mark.parametrize(
    "argv, extra_env, fragment",
    [
        (("add", "nosuchnet", "/run/netns/x"), {}, 'no net configuration with name "nosuchnet"'),
        (("add", "lonet", "/run/netns/x"), {"CNI_ARGS": "bogus"}, 'invalid CNI_ARGS pair "bogus"'),
        (("add", "lonet", "/run/netns/x"), {"CAP_ARGS": "{nope"}, "CAP_ARGS is not valid JSON"),
        (("add", "lonet", "/run/netns/x"), {"CNI_PATH": "/nonexistent"}, 'failed to find plugin "loopback"'),
        (("add", "lonet", "/run/netns/pct-missing"), {}, "does not exist"),
        (("add", "lonet", "/run/netns/x"), {"CNI_IFNAME": "a/b"}, "CNI_IFNAME"),
    ],
)
def test_failures_are_one_line(
    argv: tuple[str, ...], extra_env: dict[str, str], fragment: str, netconf: Path, plugin_dir: Path, tmp_path: Path
) -> None:
    out = pycni(*argv, env=cli_env(netconf, plugin_dir, tmp_path, **extra_env))
    assert out.returncode == 1
    assert out.stdout == ""
    assert fragment in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_json_errors(netconf: Path, plugin_dir: Path, tmp_path: Path) -> None:
    out = pycni("--json", "add", "nosuchnet", "/run/netns/x", env=cli_env(netconf, plugin_dir, tmp_path))
    assert out.returncode == 1
    assert json.loads(out.stdout)["code"] == 7


def test_validate(netconf: Path, plugin_dir: Path, tmp_path: Path) -> None:
    out = pycni("--json", "validate", "lonet", env=cli_env(netconf, plugin_dir, tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["plugins"] == ["loopback"]
    (netconf / "20-bad.conflist").write_text(json.dumps({"cniVersion": "1.1.0", "name": "bad", "plugins": [{"type": "nothere"}]}))
    bad = pycni("validate", "bad", env=cli_env(netconf, plugin_dir, tmp_path))
    assert bad.returncode == 1 and "nothere" in bad.stderr


def test_version_and_plugins(plugin_dir: Path, tmp_path: Path) -> None:
    out = pycni("--json", "version", check=True)
    assert json.loads(out.stdout)["supportedVersions"][-1] == "1.1.0"
    probe = pycni("--json", "version", "--plugin", "loopback", env={"CNI_PATH": str(plugin_dir)}, check=True)
    assert json.loads(probe.stdout)["supportedVersions"] == ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    installed = pycni("plugins", "install", str(tmp_path / "bin"), check=True)
    assert str(tmp_path / "bin" / "loopback") in installed.stdout
    launcher = (tmp_path / "bin" / "loopback").read_text()
    assert launcher.startswith(f"#!{os.path.realpath(os.sys.executable)} -IS\n")
    assert "shims" not in launcher.splitlines()[0]


@pytest.mark.difference("cli-gc")
def test_gc_keeps_attachments_whose_namespace_lives(netconf: Path, plugin_dir: Path, tmp_path: Path, make_netns) -> None:
    alive, dead = make_netns(), make_netns()
    env = cli_env(netconf, plugin_dir, tmp_path)
    for ns in (alive, dead):
        pycni("add", "lonet", ns.path, env=env, check=True)
    subprocess.run(["ip", "netns", "del", dead.name], check=True)
    pycni("gc", "lonet", env=env, check=True)
    remaining = os.listdir(tmp_path / "cache" / "results")
    assert len(remaining) == 1
    cid = "cnitool-" + hashlib.sha512(alive.path.encode()).digest()[:10].hex()
    assert remaining == [f"lonet-{cid}-eth0"]
    pycni("gc", "lonet", "--none-valid", env=env, check=True)
    assert os.listdir(tmp_path / "cache" / "results") == []


def test_netns_add_del() -> None:
    from ..conftest import unique

    name = unique("pct-cli-", 20)
    assert pycni("netns", "add", name, check=True).stdout.strip() == f"/run/netns/{name}"
    assert os.path.exists(f"/run/netns/{name}")
    assert pycni("netns", "add", name).returncode == 1
    pycni("netns", "del", name, check=True)
    assert not os.path.exists(f"/run/netns/{name}")
