#!/usr/bin/env bash
# `make demo-cluster`: three Calico nodes on one machine, pod traffic between them.
# Runs inside a private network + mount namespace (scripts/in-netns.sh), so the machine's own
# interfaces, routes and firewall are never touched; everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/in-netns.sh .venv/bin/python scripts/demo_cluster.py "$@"
