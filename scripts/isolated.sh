#!/usr/bin/env bash
# Run a command in a private network and mount namespace, with its own /run/netns and
# /sys: what it creates (namespaces, links, routes, nftables rules, sysctls) is invisible
# to the machine and to other test runs on it, and theirs to it. Needs root.
#   scripts/isolated.sh make test
set -euo pipefail
exec unshare --net --mount --propagation private -- bash -c '
  mount -t tmpfs -o mode=755 tmpfs /run/netns
  mount -t sysfs sysfs /sys
  ip link set lo up
  exec "$@"' isolated "$@"
