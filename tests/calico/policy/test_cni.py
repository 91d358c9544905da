"""What the calico plugin takes for policy: the pod's labels from args.cni.labels."""

from __future__ import annotations

from typing import Any

import pytest

from pycni.calico.policy.cni import pod_labels
from pycni.spec.errors import CNIError, Code


def test_labels_from_args_as_go_reads_the_keys() -> None:
    assert pod_labels({}) == {}
    conf = {"args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "example.com/tier", "value": ""}]}}}
    assert pod_labels(conf) == {"app": "web", "example.com/tier": ""}
    assert pod_labels({"Args": {"CNI": {"Labels": [{"Key": "app", "Value": "db"}]}}}) == {"app": "db"}


@pytest.mark.parametrize(
    "labels",
    [
        "app=web",
        [{"key": "bad key", "value": "x"}],
        [{"key": "app", "value": "x" * 64}],
        [{"value": "x"}],
        [{"key": "app", "value": 5}],
    ],
)
def test_bad_labels_are_code_7_naming_them(labels: Any) -> None:
    with pytest.raises(CNIError) as info:
        pod_labels({"args": {"cni": {"labels": labels}}})
    assert info.value.code == Code.INVALID_NETWORK_CONFIG and "args.cni.labels" in info.value.msg
