#!/usr/bin/env bash
# Debian's Chromium for the report's browser test (tests/unit/report/test_browser.py): installed with
# apt when missing and this runs as root; otherwise it says how, and the test fails with that message.
set -euo pipefail
CHROMIUM=${SEGMENTATION_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get > /dev/null; then
  echo "browser: installing Debian's chromium for the report test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null; }
else
  echo "browser: $CHROMIUM is missing: install Debian's 'chromium' package (or set SEGMENTATION_CHROMIUM)" >&2
fi
