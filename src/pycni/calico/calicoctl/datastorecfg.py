"""Which datastore calicoctl talks to: a CalicoAPIConfig file, else the environment.

As calicoctl does, `--config` (default /etc/calico/calicoctl.cfg) wins when the file
exists; otherwise DATASTORE_TYPE, ETCD_ENDPOINTS, ETCD_KEY_FILE, ETCD_CERT_FILE,
ETCD_CA_CERT_FILE (and pycni's DATASTORE_PATH for the embedded store) are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pycni import extras
from pycni.calico.datastore import EMBEDDED, DatastoreSettings

DEFAULT_CONFIG = "/etc/calico/calicoctl.cfg"
_SPEC_KEYS = {
    "datastoreType": "kind",
    "etcdEndpoints": "etcd_endpoints",
    "etcdKeyFile": "etcd_key_file",
    "etcdCertFile": "etcd_cert_file",
    "etcdCACertFile": "etcd_ca_cert_file",
    "datastorePath": "path",
}
_ENV_KEYS = {
    "DATASTORE_TYPE": "kind",
    "ETCD_ENDPOINTS": "etcd_endpoints",
    "ETCD_KEY_FILE": "etcd_key_file",
    "ETCD_CERT_FILE": "etcd_cert_file",
    "ETCD_CA_CERT_FILE": "etcd_ca_cert_file",
    "DATASTORE_PATH": "path",
}


class ConfigError(ValueError):
    pass


def load(path: str, env: Mapping[str, str]) -> DatastoreSettings:
    settings = DatastoreSettings(kind=EMBEDDED)
    if os.path.exists(path):
        yaml: Any = extras.require("yaml", "calico", "calicoctl's configuration file")

        try:
            with open(path) as fh:
                doc: Any = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"failed to read config file {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "CalicoAPIConfig":
            raise ConfigError(f"config file {path} is not a CalicoAPIConfig resource")
        for key, attr in _SPEC_KEYS.items():
            value = (doc.get("spec") or {}).get(key)
            if value:
                setattr(settings, attr, str(value))
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"config file {path} does not exist")
    else:
        for key, attr in _ENV_KEYS.items():
            if env.get(key):
                setattr(settings, attr, env[key])
    return settings
