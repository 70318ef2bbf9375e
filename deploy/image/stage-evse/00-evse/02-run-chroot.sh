#!/bin/bash -e
# pi-gen, inside the image's chroot: the package in /opt/evse/venv with precompiled bytecode, the evse user, and
# the units enabled.
# --system-site-packages: PyPI has no aarch64 wheel of pyscard, so the `pi` extra would compile it; Raspberry Pi
# OS's python3-pyscard (00-packages) satisfies it instead. install.sh keeps an existing venv.
python3 -m venv --system-site-packages /opt/evse/venv
EVSE_PREFIX=/ sh /root/evse-src/deploy/install.sh
# install.sh compiles the whole venv best-effort; the firmware's own modules must compile, or the build fails.
site=$(/opt/evse/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
/opt/evse/venv/bin/python -m compileall -q -f "${site}/firmware" "${site}/hal"
systemd-sysusers
chgrp evse /etc/evse/config.toml
systemctl enable evse.service evse-datapart.service evse-firstboot.service evse-overlay.service
rm -rf /root/evse-src /root/.cache/pip
