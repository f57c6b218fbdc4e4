#!/usr/bin/env bash
# Install Debian's mosquitto when it is missing (the integration tests run against a real one).
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo -n"
else
  SUDO=""
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mosquitto is missing and apt-get is not available: install mosquitto by hand" >&2
  exit 1
fi
echo "installing mosquitto from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
# The package starts a system broker on port 1883; the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
