#!/usr/bin/env bash
# Installs debcache from this checkout on Debian 12, as root (README.md, "Set-up"):
# Debian's python3-venv if it is missing, a virtual environment in /opt/debcache
# holding debcache and its Python dependencies (from PyPI, or whatever index pip is
# configured to use), /usr/local/bin/debcache linked to its command, the README in
# /usr/local/share/doc/debcache, and the systemd units in /usr/local/lib/systemd/system
# (installed, not enabled: README.md, "Run as a service").
# Run it again after `git pull`: it reinstalls the checkout into the same place.
set -euo pipefail
cd "$(dirname "$0")"

venv=/opt/debcache
command_link=/usr/local/bin/debcache
documentation=/usr/local/share/doc/debcache # systemd/debcache.service's Documentation=
units=/usr/local/lib/systemd/system # systemd's place for units installed outside dpkg
python=/usr/bin/python3 # Debian's own, so the service never depends on a user's PATH

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "must run as root (it installs a Debian package and writes $venv); run it with sudo"
fi
command -v apt-get >/dev/null || fail "needs Debian (apt-get and dpkg); install on Debian 12"

# Debian's python3 creates virtual environments only with python3-venv (ensurepip).
if ! dpkg-query -W -f='${db:Status-Abbrev}' python3-venv 2>/dev/null | grep -q '^ii'; then
    echo "install.sh: installing python3-venv from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "debcache needs Python 3.11 or later, $python is $("$python" -V 2>&1); install on Debian 12"

# A venv whose interpreter is gone (python3 replaced) is made again; anything else
# already at that path is left alone.
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    if [ -e "$venv" ] && [ ! -e "$venv/pyvenv.cfg" ]; then
        fail "$venv exists and is not debcache's virtual environment; move it away and run again"
    fi
    echo "install.sh: creating the virtual environment $venv"
    "$python" -m venv --clear "$venv"
fi

echo "install.sh: installing debcache from $PWD into $venv"
# A local directory is always rebuilt and reinstalled, so a pulled checkout replaces
# the installed copy; dependencies already satisfied are kept.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$PWD"
ln -sfn "$venv/bin/debcache" "$command_link"
install -D -m 644 README.md "$documentation/README.md"
# The units go with the code they run, so a reinstall updates both; local changes
# belong in drop-ins (systemctl edit debcache.service), which a reinstall keeps.
install -D -m 644 -t "$units" systemd/debcache.service systemd/debcache.socket
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload # systemd is running: it reads the new units now
fi
echo "install.sh: done; $command_link runs $venv/bin/debcache. Start it with: debcache serve"
echo "install.sh: or as a service: systemctl enable --now debcache.socket debcache.service"
