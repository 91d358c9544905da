"""A CRI client for the containerd tests: the part of k8s.io/cri-api's runtime.v1
RuntimeService the tests use (Version, RunPodSandbox, PodSandboxStatus, StopPodSandbox,
RemovePodSandbox, ListPodSandbox), over gRPC.

Debian 12 has no crictl. The messages are described here field by field, with the names,
types and field numbers of runtime/v1/api.proto (protobuf's wire format is those numbers
and types, so a subset of the fields is a valid client), and built at run time with
protobuf's descriptor API: grpcio and protobuf are already dependencies of pycni, and
nothing is generated or fetched.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "runtime.v1"
SERVICE = f"/{PACKAGE}.RuntimeService/"

F = descriptor_pb2.FieldDescriptorProto
STRING, BOOL, INT32, UINT32, INT64, ENUM, MESSAGE = (
    F.TYPE_STRING,
    F.TYPE_BOOL,
    F.TYPE_INT32,
    F.TYPE_UINT32,
    F.TYPE_INT64,
    F.TYPE_ENUM,
    F.TYPE_MESSAGE,
)
MAP = "map"  # map<string, string>

# message -> [(field, number, type, type name or None, repeated)]
MESSAGES: dict[str, list[tuple[str, int, Any, str | None, bool]]] = {
    "VersionRequest": [("version", 1, STRING, None, False)],
    "VersionResponse": [
        ("version", 1, STRING, None, False),
        ("runtime_name", 2, STRING, None, False),
        ("runtime_version", 3, STRING, None, False),
        ("runtime_api_version", 4, STRING, None, False),
    ],
    "DNSConfig": [
        ("servers", 1, STRING, None, True),
        ("searches", 2, STRING, None, True),
        ("options", 3, STRING, None, True),
    ],
    "PortMapping": [
        ("protocol", 1, ENUM, "Protocol", False),
        ("container_port", 2, INT32, None, False),
        ("host_port", 3, INT32, None, False),
        ("host_ip", 4, STRING, None, False),
    ],
    "NamespaceOption": [
        ("network", 1, ENUM, "NamespaceMode", False),
        ("pid", 2, ENUM, "NamespaceMode", False),
        ("ipc", 3, ENUM, "NamespaceMode", False),
    ],
    "LinuxSandboxSecurityContext": [("namespace_options", 1, MESSAGE, "NamespaceOption", False)],
    "LinuxPodSandboxConfig": [
        ("cgroup_parent", 1, STRING, None, False),
        ("security_context", 2, MESSAGE, "LinuxSandboxSecurityContext", False),
    ],
    "PodSandboxMetadata": [
        ("name", 1, STRING, None, False),
        ("uid", 2, STRING, None, False),
        ("namespace", 3, STRING, None, False),
        ("attempt", 4, UINT32, None, False),
    ],
    "PodSandboxConfig": [
        ("metadata", 1, MESSAGE, "PodSandboxMetadata", False),
        ("hostname", 2, STRING, None, False),
        ("log_directory", 3, STRING, None, False),
        ("dns_config", 4, MESSAGE, "DNSConfig", False),
        ("port_mappings", 5, MESSAGE, "PortMapping", True),
        ("labels", 6, MAP, None, False),
        ("annotations", 7, MAP, None, False),
        ("linux", 8, MESSAGE, "LinuxPodSandboxConfig", False),
    ],
    "RunPodSandboxRequest": [
        ("config", 1, MESSAGE, "PodSandboxConfig", False),
        ("runtime_handler", 2, STRING, None, False),
    ],
    "RunPodSandboxResponse": [("pod_sandbox_id", 1, STRING, None, False)],
    "StopPodSandboxRequest": [("pod_sandbox_id", 1, STRING, None, False)],
    "StopPodSandboxResponse": [],
    "RemovePodSandboxRequest": [("pod_sandbox_id", 1, STRING, None, False)],
    "RemovePodSandboxResponse": [],
    "PodSandboxStatusRequest": [("pod_sandbox_id", 1, STRING, None, False), ("verbose", 2, BOOL, None, False)],
    "PodIP": [("ip", 1, STRING, None, False)],
    "PodSandboxNetworkStatus": [("ip", 1, STRING, None, False), ("additional_ips", 2, MESSAGE, "PodIP", True)],
    "PodSandboxStatus": [
        ("id", 1, STRING, None, False),
        ("metadata", 2, MESSAGE, "PodSandboxMetadata", False),
        ("state", 3, ENUM, "PodSandboxState", False),
        ("created_at", 4, INT64, None, False),
        ("network", 5, MESSAGE, "PodSandboxNetworkStatus", False),
        ("annotations", 8, MAP, None, False),
    ],
    "PodSandboxStatusResponse": [("status", 1, MESSAGE, "PodSandboxStatus", False), ("info", 2, MAP, None, False)],
    "PodSandboxFilter": [("id", 1, STRING, None, False)],
    "ListPodSandboxRequest": [("filter", 1, MESSAGE, "PodSandboxFilter", False)],
    "PodSandbox": [
        ("id", 1, STRING, None, False),
        ("metadata", 2, MESSAGE, "PodSandboxMetadata", False),
        ("state", 3, ENUM, "PodSandboxState", False),
    ],
    "ListPodSandboxResponse": [("items", 1, MESSAGE, "PodSandbox", True)],
}
ENUMS = {
    "Protocol": ["TCP", "UDP", "SCTP"],
    "NamespaceMode": ["POD", "CONTAINER", "NODE", "TARGET"],
    "PodSandboxState": ["SANDBOX_READY", "SANDBOX_NOTREADY"],
}
METHODS = {
    "Version": ("VersionRequest", "VersionResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="pycni_tests/cri_runtime_v1.proto", package=PACKAGE, syntax="proto3")
    for name, values in ENUMS.items():
        enum = fd.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, fields in MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for field, number, kind, type_name, repeated in fields:
            label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if kind == MAP:
                entry = msg.nested_type.add(name="".join(p.title() for p in field.split("_")) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=STRING, label=F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=STRING, label=F.LABEL_OPTIONAL)
                msg.field.add(
                    name=field, number=number, type=MESSAGE, label=F.LABEL_REPEATED, type_name=f".{PACKAGE}.{name}.{entry.name}"
                )
            elif type_name:
                msg.field.add(name=field, number=number, type=kind, label=label, type_name=f".{PACKAGE}.{type_name}")
            else:
                msg.field.add(name=field, number=number, type=kind, label=label)
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
TYPES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


class RuntimeClient:
    """RuntimeService calls on containerd's socket: `client.call("RunPodSandbox", config=...)`."""

    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")

    def call(self, method: str, timeout: float = 120, **fields: Any) -> Any:
        request, response = METHODS[method]
        stub = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=TYPES[response].FromString,
        )
        return stub(TYPES[request](**fields), timeout=timeout)

    def close(self) -> None:
        self.channel.close()
