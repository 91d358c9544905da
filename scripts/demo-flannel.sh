#!/usr/bin/env bash
# `make demo-flannel`: three Flannel nodes on one machine (flanneld, one etcd), pods pinging
# across them. Runs inside a private network + mount namespace (scripts/in-netns.sh), so the
# machine's own interfaces, routes and firewall are never touched; everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/in-netns.sh .venv/bin/python scripts/demo_flannel.py "$@"
