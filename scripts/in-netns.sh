#!/usr/bin/env bash
# Run a command (the test suite) inside a fresh network namespace that stands in for the host.
#
# Plugins under test create bridges, veths, routes, nftables tables and sysctls "on the host";
# here that host is a private namespace, so the machine's own interfaces, routes and firewall
# are never touched, test traffic cannot leave, and several test runs on one machine (CI,
# developers) cannot see or break each other's links and rules. It is removed afterwards,
# with anything a failed test left in it.
#
# Unlike `ip netns exec`, the command keeps the machine's cgroup mounts (podman's runc needs
# them): a private mount namespace gets a sysfs of the new network namespace, with the cgroup
# tree moved back on top of it.
set -euo pipefail
name="pct-host-$$-$RANDOM"
wan="$name-wan"
ip netns add "$name"
ip netns add "$wan"
trap 'ip netns del "$name" 2>/dev/null || true; ip netns del "$wan" 2>/dev/null || true' EXIT
ip -n "$name" link set lo up
ip -n "$wan" link set lo up
# A host forwards between its containers' interfaces.
ip netns exec "$name" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# Like a real host it has an uplink with a default route (proxy ARP, masquerading and
# "the interface of the default route" depend on one); the router at its other end is a
# second namespace, "<name>-wan" (TEST-NET addresses: nothing leaves the machine).
ip -n "$name" link add uplink0 type veth peer name downlink0 netns "$wan"
ip -n "$wan" addr add 198.51.100.1/24 dev downlink0
ip -n "$wan" addr add 2001:db8:ffff::1/64 dev downlink0 nodad
ip -n "$wan" link set downlink0 up
ip -n "$name" addr add 198.51.100.2/24 dev uplink0
ip -n "$name" addr add 2001:db8:ffff::2/64 dev uplink0 nodad
ip -n "$name" link set uplink0 up
ip -n "$name" route add default via 198.51.100.1
ip -n "$name" -6 route add default via 2001:db8:ffff::1
# conftest.py refuses to run anywhere but in this namespace (it compares the inode).
export PYCNI_TEST_HOST_NETNS="$name" PYCNI_TEST_WAN_NETNS="$wan" PYCNI_TEST_HOST_NETNS_INODE=$(stat -L -c %i "/run/netns/$name")
nsenter --net="/run/netns/$name" unshare --mount --propagation slave sh -euc '
  keep=$(mktemp -d /tmp/pct-cgroup.XXXXXX)
  mount --rbind /sys/fs/cgroup "$keep"
  mount -t sysfs sysfs /sys
  mount --move "$keep" /sys/fs/cgroup
  rmdir "$keep"
  exec "$@"
' sh "$@"
