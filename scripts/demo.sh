#!/usr/bin/env bash
# `make demo`: the CNI chapter's hands-on walkthrough, run for real with pycni's plugins.
# Each step says what it shows, prints the command it runs, then its output.
# It uses the chapter's names (network namespace test-cni, bridge cni0, network mynet,
# subnet 10.22.0.0/16), refuses to run if they are already in use, and removes everything
# it created when it ends, also when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# Use an agent that is already running (systemd's), never start one: the demo leaves no process behind.
export PYCNI_AGENT=managed

bold=$'\033[1m' dim=$'\033[2m' off=$'\033[0m'
[ -t 1 ] || { bold=""; dim=""; off=""; }
step() { printf '\n%s== %s%s\n' "$bold" "$1" "$off"; shift; for line in "$@"; do printf '%s   %s%s\n' "$dim" "$line" "$off"; done; }
run() { printf '$ %s\n' "$*"; "$@"; }

NS=test-cni
BRIDGE=cni0
STORE=/var/lib/cni/networks/mynet
MASQ_TABLE=cni_plugins_masquerade
WORK=$(mktemp -d /tmp/pycni-demo.XXXXXX)
BIN=$WORK/bin
CONF=$WORK/bridge.conf

for name in "$BRIDGE"; do
  if ip link show "$name" >/dev/null 2>&1; then
    echo "demo: a link named $name already exists on this machine; the demo uses the chapter's names and leaves it alone" >&2
    rm -rf "$WORK"; exit 1
  fi
done
if [ -e "/run/netns/$NS" ]; then
  echo "demo: the network namespace $NS already exists; delete it (ip netns del $NS) and run the demo again" >&2
  rm -rf "$WORK"; exit 1
fi
created_paths=()
for dir in /var/lib/cni /var/lib/cni/networks "$STORE"; do [ -e "$dir" ] || created_paths=("$dir" "${created_paths[@]}"); done
nft list table inet "$MASQ_TABLE" >/dev/null 2>&1 && had_masq_table=1 || had_masq_table=0

cleanup() {
  status=$?
  set +e  # clean up all of it, even if the terminal or pipe we print to is gone
  trap - EXIT INT TERM HUP PIPE
  printf '\n%s== Clean up%s\n' "$bold" "$off"
  if [ -e "/run/netns/$NS" ] && [ -x "$BIN/bridge" ] && [ -f "$CONF" ]; then
    # A failed step may have left the attachment: DEL is idempotent, so just run it.
    CNI_COMMAND=DEL CNI_CONTAINERID=test123 CNI_NETNS=/var/run/netns/$NS CNI_IFNAME=eth0 CNI_PATH=$BIN \
      "$BIN/bridge" < "$CONF" >/dev/null 2>&1 || true
  fi
  [ -e "/run/netns/$NS" ] && run ip netns del "$NS"
  ip link show "$BRIDGE" >/dev/null 2>&1 && run ip link del "$BRIDGE"
  [ "$had_masq_table" = 0 ] && nft delete table inet "$MASQ_TABLE" 2>/dev/null || true
  for dir in "${created_paths[@]}"; do [ -d "$dir" ] && rm -rf "$dir"; done
  rm -rf "$WORK"
  if [ "$status" = 0 ]; then echo "demo finished: everything it created is gone"; else echo "demo FAILED (exit $status); cleaned up"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

step "Install pycni's plugins into a temporary directory, which serves as CNI_PATH" \
  "The chapter uses /opt/cni/bin; this demo leaves /opt/cni/bin alone and puts one" \
  "executable per plugin type (bridge, host-local, ...) in $BIN instead." \
  "(The chapter prefixes its commands with sudo; the demo already runs as root.)"
run pycni plugins install "$BIN" | sed "s|$BIN/||" | paste -sd' ' -

step "Create the test network namespace: the container's own network stack" \
  "A fresh namespace has only a loopback interface, and it is down."
run ip netns add "$NS"
run ip netns exec "$NS" ip link

step "Write the chapter's bridge.conf" \
  "bridge plugin: connect the container to bridge cni0 through a veth pair; isGateway: the" \
  "bridge gets the subnet's first address and is the container's gateway; ipMasq: traffic" \
  "leaving the subnet is masqueraded; host-local IPAM hands out addresses from 10.22.0.0/16."
cat > "$CONF" << 'EOF'
{
"cniVersion": "1.0.0",
"name": "mynet",
"type": "bridge",
"bridge": "cni0",
"isGateway": true,
"ipMasq": true,
"ipam": {
"type": "host-local",
"subnet": "10.22.0.0/16",
"routes": [
{ "dst": "0.0.0.0/0" }
]
}
}
EOF
run cat "$CONF"

step "Call the bridge plugin directly, as a container runtime does (ADD)" \
  "The runtime passes the operation and the container in CNI_* environment variables and" \
  "the configuration on stdin; the plugin prints its result as JSON on stdout."
run export CNI_COMMAND=ADD CNI_CONTAINERID=test123 CNI_NETNS=/var/run/netns/$NS CNI_IFNAME=eth0 CNI_PATH=$BIN
echo "\$ cat $CONF | $BIN/bridge"
cat "$CONF" | "$BIN/bridge"
echo

step "Look inside the container" \
  "eth0 (the container end of the veth pair) has the address host-local gave it; the default" \
  "route goes via the gateway 10.22.0.1, the bridge."
run ip netns exec "$NS" ip addr
run ip netns exec "$NS" ip route

step "Look at the host side" \
  "The plugin created the bridge cni0 with the gateway address; the host end of the veth pair" \
  "(vethXXXXXXXX) is a port of it."
run ip link show "$BRIDGE"
run bridge link show
run ip -brief addr show "$BRIDGE"
echo "host-local recorded the allocation in a file named after the address (content: container ID, interface):"
run ls "$STORE"
printf '$ cat %s/10.22.0.2\n' "$STORE"; cat "$STORE/10.22.0.2" | tr -d '\r'; echo
echo "ipMasq added an nftables rule for this container:"
run nft list chain inet "$MASQ_TABLE" masq_checks

step "Ping the gateway from the container"
run ip netns exec "$NS" ping -c 3 -i 0.2 10.22.0.1

step "Remove the container's network (DEL)" \
  "Same configuration, CNI_COMMAND=DEL: the plugin deletes the veth pair, releases the address" \
  "and removes the rule. The bridge stays: other containers may use it. DEL prints nothing."
run export CNI_COMMAND=DEL
echo "\$ cat $CONF | $BIN/bridge"
cat "$CONF" | "$BIN/bridge" && echo "(exit status 0)"
run ip netns exec "$NS" ip link
run ls "$STORE"
unset CNI_COMMAND CNI_CONTAINERID CNI_NETNS CNI_IFNAME

step "The same through the runtime: pycni add/del (cnitool's interface) with a conflist" \
  "A runtime reads a network configuration list (.conflist) from a directory, runs its" \
  "plugins in order, caches the result, and feeds it back to CHECK and DEL."
mkdir -p "$WORK/net.d"
cat > "$WORK/net.d/10-mynet.conflist" << 'EOF'
{
  "cniVersion": "1.0.0",
  "name": "mynet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
EOF
run cat "$WORK/net.d/10-mynet.conflist"
run export NETCONFPATH="$WORK/net.d" CNI_PATH="$BIN" CNI_CACHE_DIR="$WORK/cache"
run pycni add mynet "/var/run/netns/$NS"
echo
run ip netns exec "$NS" ip -brief addr show eth0
run ip netns exec "$NS" ping -c 1 10.22.0.1
run pycni check mynet "/var/run/netns/$NS" && echo "(CHECK passed: the container's network is as ADD left it)"
run pycni del mynet "/var/run/netns/$NS" && echo "(DEL done)"
run ip netns exec "$NS" ip -brief link
