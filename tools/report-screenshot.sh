#!/usr/bin/env bash
# Renders `oracle regress report` in headless Chromium and saves a screenshot, to check that the
# page opens in a real browser with no network (the README's image, docs/regress-report.png,
# is made with this script).
#
#   tools/report-screenshot.sh [STORE] [PNG]      defaults: regress docs/regress-report.png
#
# Installs Debian's `chromium` with apt-get when it is missing (needs root or sudo). Chromium
# runs with every network request sent to a dead proxy, so anything the page tried to fetch
# (scripts, fonts, CSS) would be missing from the screenshot rather than silently loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-regress}
png=${2:-docs/regress-report.png}
out=$(mktemp -d -t regress-report.XXXXXX)

if [ ! -x .build/release/oracle ]; then swift build -c release --product oracle; fi
.build/release/oracle regress report --store "$store" --out "$out"

if ! command -v chromium >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo apt-get install -y chromium
fi

mkdir -p "$(dirname "$png")"
# --proxy-server to a closed port: no request can leave the machine; the page needs none.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --proxy-server="http://127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
    --screenshot="$(pwd)/$png" --window-size=1280,2000 "file://$out/index.html" 2>/dev/null
echo "report: $out/index.html"
echo "screenshot: $png ($(stat -c %s "$png") bytes)"
