"""CNI_ARGS, name validation and version handling."""

from __future__ import annotations

import pytest

from pycni.spec import args, names, version
from pycni.spec.errors import CNIError


def test_cni_args_pairs() -> None:
    assert args.parse("K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default") == [
        ("K8S_POD_NAME", "web-0"),
        ("K8S_POD_NAMESPACE", "default"),
    ]
    assert args.parse("") == []
    assert args.parse("IP=10.0.0.5;") == [("IP", "10.0.0.5")]


@pytest.mark.parametrize("bad", ["novalue", "=x", "a=b=c"])
def test_cni_args_bad_pair_is_code_4(bad: str) -> None:
    with pytest.raises(CNIError) as exc:
        args.parse(bad)
    assert exc.value.code == 4 and bad in exc.value.msg


def test_unknown_keys_need_ignore_unknown() -> None:
    with pytest.raises(CNIError, match="unknown key 'FOO'"):
        args.load("FOO=1;IP=10.0.0.2", known=["IP"])
    assert args.load("IgnoreUnknown=1;FOO=1;IP=10.0.0.2", known=["IP"])["IP"] == "10.0.0.2"
    assert args.load("IgnoreUnknown=true;FOO=1", known=[])["FOO"] == "1"


@pytest.mark.parametrize("name", ["eth0", "net1", "a" * 15, "veth-1.2_x"])
def test_valid_interface_names(name: str) -> None:
    assert names.validate_interface_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb", "a\nb"])
def test_invalid_interface_names(name: str) -> None:
    with pytest.raises(CNIError) as exc:
        names.validate_interface_name(name)
    assert exc.value.code == 4


@pytest.mark.parametrize("cid", ["", "../etc", "-x", "a b", "a/b", "x" * 500])
def test_invalid_container_ids(cid: str) -> None:
    with pytest.raises(CNIError) as exc:
        names.validate_container_id(cid)
    assert exc.value.code == 4


def test_version_compare_and_gate() -> None:
    assert version.at_least("1.1.0", "0.4.0")
    assert not version.at_least("0.3.1", "0.4.0")
    with pytest.raises(CNIError) as exc:
        version.require_supported("2.0.0")
    assert exc.value.code == 1 and "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in exc.value.details
    with pytest.raises(CNIError) as exc:
        version.parse("1.0")
    assert exc.value.code == 6
