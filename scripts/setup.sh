#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need on a fresh Debian 12 machine (as root):
# the Debian packages, a virtualenv in .venv, and pycni installed into it with its extras
# (calico, etcd) and the test tools, at the exact versions of requirements.lock (non-editable:
# pip compiles the modules, and the tests run what a user would install).
set -euo pipefail
shopt -s lastpipe
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (pycni creates network namespaces, links and firewall rules)" >&2
  exit 1
fi

# Debian packages: the kernel tools, the Go reference plugins (the oracle of the tests),
# traffic tools, etcd for the cluster datastore, podman as a real libcni client.
# golang-go with Debian's libcni sources builds the libcni client of the interop tests;
# busybox-static is the image of the podman tests.
PACKAGES=(iproute2 nftables iptables containernetworking-plugins iperf3 conntrack
          etcd-server etcd-client podman runc iputils-ping jq procps kmod
          golang-go golang-github-appc-cni-dev busybox-static bird containerd)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps etcd from being started as a system service: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# pip's notes about unreachable extra indexes are noise; real errors still show and fail the pipe.
quiet() { grep -v -e "^WARNING: Location" -e "^$" || true; }

# The virtualenv, built on the real interpreter (a pyenv shim would be re-resolved on every call).
REAL_PYTHON=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ ! -x .venv/bin/python ] || [ "$(readlink -f .venv/bin/python)" != "$REAL_PYTHON" ]; then
  rm -rf .venv
  "$REAL_PYTHON" -m venv .venv
fi
stamp=.venv/.deps-$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -c requirements.lock setuptools wheel 2>&1 | quiet
  .venv/bin/pip install -q --disable-pip-version-check -c requirements.lock ".[calico,etcd,metrics,test]" 2>&1 | quiet
  # Wheels of the core dependencies, for tests/test_package.py: it installs pycni into a fresh
  # virtualenv inside the tests' private network namespace, where there is no network.
  rm -rf .venv/wheelhouse
  .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > .venv/core-requirements.txt
  .venv/bin/pip wheel -q --disable-pip-version-check -c requirements.lock -r .venv/core-requirements.txt -w .venv/wheelhouse 2>&1 | quiet
  rm -f .venv/.deps-* && touch "$stamp"
fi
# Always reinstall pycni itself, so the venv runs the checkout's code (without setuptools'
# build/ directory, which would keep shipping modules that no longer exist in src/).
rm -rf build
.venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall --no-build-isolation . 2>&1 | quiet
