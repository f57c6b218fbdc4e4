#!/usr/bin/env bash
# Install Debian's chromium when it is missing (the dashboard's browser test drives it headless).
# Without it that test skips and says why; nothing else needs it.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo -n"
else
  SUDO=""
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and apt-get is not available: the browser test will skip" >&2
  exit 0
fi
echo "installing chromium from Debian's packages (first time: a minute or two)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq >/dev/null && \
       $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
  echo "could not install chromium: the browser test will skip" >&2
fi
