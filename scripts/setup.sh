#!/usr/bin/env bash
# Create .venv with fedbus and its test tools; reuse it while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "fedbus needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
stamp=".venv/.fedbus-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first time: about a minute)" >&2
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -vE '^WARNING: Location|BuildBackendWarning|^ *$' >&2 || true
.venv/bin/python -c 'import fedbus, aiomqtt, iotcore, pytest'
echo "$want" > "$stamp"
