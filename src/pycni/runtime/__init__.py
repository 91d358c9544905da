"""The runtime side of CNI (what libcni is for Go): load network configuration
lists, run their plugin chains, and keep the result cache."""

from pycni.runtime.api import CNIConfig, GCArgs, RuntimeConf

__all__ = ["CNIConfig", "GCArgs", "RuntimeConf"]
