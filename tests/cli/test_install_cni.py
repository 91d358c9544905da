"""`pycni install-cni`, as Calico's installer in its DaemonSet: launchers into the CNI bin
directory, the conflist from a template with its placeholders filled from the environment,
the nodename file and the MTU file; a placeholder nothing fills is refused, naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycni.cli import install_cni

from ..calico.test_acceptance import seed_conflist

SEED_TEMPLATE = seed_conflist()["raw"]


def run(tmp: Path, template: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp / "template").write_text(template)
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_NETWORK_CONFIG_FILE": str(tmp / "template"),
        "CNI_NET_DIR": str(tmp / "net.d"),
        "CALICO_VAR_LIB_DIR": str(tmp / "lib"),
        "TLS_ASSETS_DIR": str(tmp / "secrets"),
    }
    argv = [sys.executable, "-m", "pycni.cli.main", "install-cni", "--cni-bin-dir", str(tmp / "bin")]
    return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)


def test_the_seed_template_is_filled_from_the_nodename_and_mtu_files(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "nodename").write_text("node-7\n")  # what calico-node writes
    (tmp_path / "lib" / "mtu").write_text("1440\n")
    out = run(tmp_path, SEED_TEMPLATE)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "net.d" / "10-calico.conflist"
    conf = json.loads(written.read_text())
    assert out.stdout.strip() == written.read_text().strip()
    calico = conf["plugins"][0]
    assert (calico["nodename"], calico["mtu"]) == ("node-7", 1440)
    assert calico["kubernetes"]["kubeconfig"] == str(tmp_path / "net.d" / "calico-kubeconfig")
    assert sorted(os.listdir(tmp_path / "net.d")) == ["10-calico.conflist"]  # no temporary file left
    assert (tmp_path / "bin" / "calico").read_text().startswith("#!") and (tmp_path / "bin" / "portmap").exists()
    assert oct(written.stat().st_mode & 0o777) == "0o644"


def test_the_environment_wins_and_calicos_other_variables_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-calico.conflist").write_text("{}")  # an older name, removed
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "etcd-ca").write_text("CA")
    template = SEED_TEMPLATE.replace('"kubernetes"', '"__DATASTORE_TYPE__", "etcd_ca_cert_file": "__ETCD_CA_CERT_FILE__"', 1)
    out = run(
        tmp_path,
        template,
        KUBERNETES_NODE_NAME="node-env",
        CNI_MTU="1400",
        DATASTORE_TYPE="etcdv3",
        CNI_CONF_NAME="05-calico.conflist",
        SKIP_CNI_BINARIES="bandwidth,tuning",
    )
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "net.d")) == ["05-calico.conflist", "calico-tls"]
    calico = json.loads((tmp_path / "net.d" / "05-calico.conflist").read_text())["plugins"][0]
    assert (calico["nodename"], calico["mtu"], calico["datastore_type"]) == ("node-env", 1400, "etcdv3")
    assert calico["etcd_ca_cert_file"] == str(tmp_path / "net.d" / "calico-tls" / "etcd-ca")
    assert (tmp_path / "net.d" / "calico-tls" / "etcd-ca").read_text() == "CA"
    installed = set(os.listdir(tmp_path / "bin"))
    assert "calico" in installed and not installed & {"bandwidth", "tuning"}


def test_existing_launchers_are_kept_when_asked(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "calico").write_text("mine")
    out = run(tmp_path, SEED_TEMPLATE, UPDATE_CNI_BINARIES="false")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bin" / "calico").read_text() == "mine" and (tmp_path / "bin" / "calico-ipam").exists()


@pytest.mark.parametrize(
    ("template", "env", "message"),
    [
        (SEED_TEMPLATE.replace('"info"', '"__LOG_LEVEL__", "x": "__SOMETHING_ELSE__"'), {}, "cannot fill: __SOMETHING_ELSE__"),
        (SEED_TEMPLATE.replace('"plugins"', '"plugins" "oops"'), {}, "is not valid JSON once filled"),
        (SEED_TEMPLATE, {"CNI_MTU": "jumbo"}, "CNI_MTU: 'jumbo' is not an MTU"),
        (SEED_TEMPLATE, {"CNI_CONF_NAME": "../escape"}, "is not a file name"),
    ],
)
def test_a_template_it_cannot_fill_is_refused_and_nothing_is_written(
    tmp_path: Path, template: str, env: dict[str, str], message: str
) -> None:
    out = run(tmp_path, template, **env)
    assert out.returncode == 1 and message in out.stderr and "nothing was written" in out.stderr, out.stderr
    assert not (tmp_path / "net.d").exists() and not (tmp_path / "bin").exists()


def test_render_fills_every_placeholder_of_calicos_default_template(tmp_path: Path) -> None:
    filled = install_cni.values({"KUBERNETES_NODE_NAME": "n1"}, str(tmp_path), {})
    conf = json.loads(install_cni.render(install_cni.DEFAULT_TEMPLATE, filled))
    assert conf["plugins"][0]["datastore_type"] == "embedded" and conf["plugins"][0]["mtu"] == 1500
