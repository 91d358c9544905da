#!/usr/bin/env bash
# `make demo`: pycni's main job, shown step by step. Each step prints what it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

NS=pycni-demo
WORK=$(mktemp -d /tmp/pycni-demo.XXXXXX)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true

step "Install pycni's plugin executables where a runtime looks for them (CNI_PATH)"
run pycni plugins install "$WORK/bin"

step "Create a network namespace: the container's isolation domain"
run ip netns add "$NS"
run ip netns exec "$NS" ip -brief link

step "Call the loopback plugin directly, as a runtime does: CNI_* in the environment, config on stdin"
cat > "$WORK/lo.conf" <<JSON
{"cniVersion": "1.1.0", "name": "lonet", "type": "loopback"}
JSON
run cat "$WORK/lo.conf"
echo "\$ CNI_COMMAND=ADD CNI_CONTAINERID=demo1 CNI_NETNS=/run/netns/$NS CNI_IFNAME=eth0 $WORK/bin/loopback < lo.conf"
CNI_COMMAND=ADD CNI_CONTAINERID=demo1 CNI_NETNS=/run/netns/$NS CNI_IFNAME=eth0 CNI_PATH="$WORK/bin" \
  "$WORK/bin/loopback" < "$WORK/lo.conf"; echo
run ip netns exec "$NS" ip -brief addr show lo
echo "\$ CNI_COMMAND=DEL ... $WORK/bin/loopback < lo.conf"
CNI_COMMAND=DEL CNI_CONTAINERID=demo1 CNI_NETNS=/run/netns/$NS CNI_IFNAME=eth0 CNI_PATH="$WORK/bin" \
  "$WORK/bin/loopback" < "$WORK/lo.conf" && echo "(DEL prints nothing and exits 0)"

step "Bad input gets a well-formed CNI error, never a traceback"
echo "\$ echo '{\"cniVersion\": \"9.9.9\", \"name\": \"lonet\"}' | CNI_COMMAND=ADD ... loopback"
echo '{"cniVersion": "9.9.9", "name": "lonet"}' | CNI_COMMAND=ADD CNI_CONTAINERID=demo1 CNI_NETNS=/run/netns/$NS \
  CNI_IFNAME=eth0 "$WORK/bin/loopback" || echo "(exit status $?)"

step "The same through the runtime: a network configuration list, run by 'pycni' (cnitool's interface)"
mkdir -p "$WORK/net.d"
cat > "$WORK/net.d/10-lonet.conflist" <<JSON
{"cniVersion": "1.1.0", "name": "lonet", "plugins": [{"type": "loopback"}]}
JSON
run cat "$WORK/net.d/10-lonet.conflist"
export NETCONFPATH="$WORK/net.d" CNI_PATH="$WORK/bin" CNI_CACHE_DIR="$WORK/cache"
run pycni add lonet "/run/netns/$NS"; echo
step "The runtime cached the result (libcni's cniCacheV1 format), for CHECK and DEL"
run ls "$WORK/cache/results"
run pycni check lonet "/run/netns/$NS" && echo "(CHECK passed)"
run pycni del lonet "/run/netns/$NS" && echo "(DEL done; cache entry removed)"
run ls "$WORK/cache/results"

step "Clean up"
run ip netns del "$NS"
echo "demo finished"
