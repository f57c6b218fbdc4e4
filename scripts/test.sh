#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, types, unit, property, integration, e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-mosquitto.sh
bash scripts/install-chromium.sh  # the dashboard's browser test (skips, saying why, without it)
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
echo "== ruff" && ruff check fedbus clients tests bench
echo "== mypy" && mypy
echo "== pytest"
set +e
pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
