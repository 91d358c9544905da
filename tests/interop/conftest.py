"""Fixtures of the interop tests: a client namespace and a TCP server in a pod, as the meta
plugins' tests have them."""

from ..plugins.meta.conftest import client_ns, tcp_server  # noqa: F401 - fixtures re-exported
