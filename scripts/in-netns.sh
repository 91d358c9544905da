#!/usr/bin/env bash
# Run a command (the test suite) in a private network and mount namespace standing in for the host.
#
# Plugins under test create bridges, veths, routes, nftables tables and sysctls "on the host";
# here that host is a fresh network namespace, so the machine's own interfaces, routes and
# firewall are never touched, test traffic cannot leave, and test runs sharing a machine (CI,
# developers) cannot see or break each other's links, rules and namespaces: /run/netns, and the
# state directories plugins and runtimes default to, are private too. Everything is gone when the
# command ends, including whatever a failed test left behind.
#
# Like a real host, the stand-in has an uplink (uplink0) with a default route (proxy ARP,
# masquerading and "the interface of the default route" depend on one); the router at its other
# end is the namespace "wan" (TEST-NET addresses), where a test can run an "outside" server.
# The machine's cgroup mounts are kept (podman's runc needs them) on top of the new /sys.
set -euo pipefail
exec unshare --net --mount --propagation private -- sh -euc '
  keep=$(mktemp -d /tmp/pct-cgroup.XXXXXX)
  mount --rbind /sys/fs/cgroup "$keep"
  mount -t sysfs sysfs /sys
  mount --move "$keep" /sys/fs/cgroup
  rmdir "$keep"
  for dir in /run/netns /var/lib/cni /run/cni /var/lib/calico /run/calico /var/log/calico /run/flannel /run/pycni /etc/cni/net.d \
             /run/containerd /etc/pycni; do
    mkdir -p "$dir" && mount -t tmpfs -o mode=755 tmpfs "$dir"
  done
  # The pycni.conf of the stand-in host: launchers use an agent a test or demo runs and never start one
  # themselves (an agent started on demand would outlive the command run here, in its namespace).
  # Tests of the on-demand agent ask for it with PYCNI_AGENT=auto, and stop what they start.
  echo "agent = managed" > /etc/pycni/pycni.conf
  ip link set lo up
  sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  ip netns add wan
  ip -n wan link set lo up
  ip link add uplink0 type veth peer name downlink0 netns wan
  ip -n wan addr add 198.51.100.1/24 dev downlink0
  ip -n wan addr add 2001:db8:ffff::1/64 dev downlink0 nodad
  ip -n wan link set downlink0 up
  ip addr add 198.51.100.2/24 dev uplink0
  ip addr add 2001:db8:ffff::2/64 dev uplink0 nodad
  ip link set uplink0 up
  ip route add default via 198.51.100.1
  ip -6 route add default via 2001:db8:ffff::1
  # conftest.py refuses to run anywhere but here (it compares this inode with its own).
  export PYCNI_TEST_HOST_NETNS_INODE=$(stat -L -c %i /proc/self/ns/net) PYCNI_TEST_WAN_NETNS=wan
  exec "$@"
' in-netns "$@"
