#!/usr/bin/env bash
# `make lock`: renew requirements.lock, the exact versions `make setup` installs (CI, the demo
# and the tests), by resolving pyproject.toml's ranges afresh in a scratch virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d /tmp/pycni-lock.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check ".[calico,etcd,metrics,test]"
{
  echo "# Exact versions of what \`make setup\` installs (CI, the demo, the tests): pycni's dependencies,"
  echo "# its extras (calico, etcd, metrics) and the test tools. The ranges are in pyproject.toml; \`make lock\`"
  echo "# renews this file from them."
  "$scratch/venv/bin/pip" freeze --all --exclude pycni --exclude pip
} > requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
