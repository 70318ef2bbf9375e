#!/bin/sh
# Install pievse on an existing Raspberry Pi OS (Bookworm, arm64/armhf) as the `evse` systemd service.
#
#   sudo deploy/install.sh            # from a checkout of this repository
#
# Lays out the paths systemd/evse.service expects: the package in a venv at /opt/evse/venv (bytecode compiled
# ahead, so a Pi Zero 2 W does not compile at every start), the PWM setup helper at /opt/evse/bin, the unit and
# its sysusers entry, and /etc/evse/config.toml (an existing one is kept). Then it checks the config and enables
# the service. Run it again to upgrade in place.
# EVSE_PREFIX=/some/root stages everything under that root instead (image builds, tests): nothing is enabled then.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${EVSE_PREFIX:-}
OPT="$PREFIX/opt/evse"
ETC="$PREFIX/etc/evse"
UNITS="$PREFIX/etc/systemd/system"
SYSUSERS="$PREFIX/usr/lib/sysusers.d"
PYTHON=${EVSE_PYTHON:-python3}

if [ -z "$PREFIX" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or set EVSE_PREFIX to stage into a directory" >&2
    exit 2
fi

echo "installing pievse from $SRC into $OPT"
if [ -z "$PREFIX" ] && command -v apt-get >/dev/null; then
    # pyscard has no arm64 wheel on PyPI (pip would compile it, needing swig and headers): Debian's python3-pyscard
    # serves the venv through its system site-packages.
    apt-get install -y -qq python3-venv python3-pyscard libpcsclite1 pcscd
fi
[ -x "$OPT/venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$OPT/venv"
# The pi extra adds pyscard and rpi-lgpio on a Pi (its markers skip them elsewhere).
"$OPT/venv/bin/python" -m pip install --quiet --upgrade "${SRC}[pi]"
"$OPT/venv/bin/python" -m compileall -q "$OPT/venv/lib" >/dev/null || true
install -D -m 0755 "$SRC/deploy/evse-pwm-setup" "$OPT/bin/evse-pwm-setup"
install -D -m 0644 "$SRC/systemd/evse.service" "$UNITS/evse.service"
install -D -m 0644 "$SRC/systemd/evse.sysusers.conf" "$SYSUSERS/evse.conf"
if [ -f "$ETC/config.toml" ]; then
    echo "keeping $ETC/config.toml"
else
    install -D -m 0640 "$SRC/config.toml" "$ETC/config.toml"
    echo "wrote $ETC/config.toml: set [charger] id and [ocpp] url, then: systemctl restart evse"
fi
"$OPT/venv/bin/evse" config check "$ETC/config.toml"

if [ -z "$PREFIX" ]; then
    systemd-sysusers
    chgrp evse "$ETC/config.toml"
    systemctl daemon-reload
    systemctl enable --now evse
    echo "evse is running: evse status, journalctl -u evse -f"
else
    echo "staged under $PREFIX (nothing enabled)"
fi
