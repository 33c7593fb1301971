#!/usr/bin/env bash
# Debian packages the GUI tests need: an X server (Xvfb, started by pytest-xvfb) and the
# xcb libraries Qt 6's xcb platform plugin loads; and groovy, which runs the QuPath script
# (tests/test_cli_session.py, skipped without it). Installs only what is missing.
set -euo pipefail
pkgs="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0
      libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxcb-xfixes0
      libgl1 libegl1 libfontconfig1 libdbus-1-3 libglib2.0-0 groovy"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "install-sysdeps: not a Debian/Ubuntu system; please install:$missing" >&2
    exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-sysdeps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
