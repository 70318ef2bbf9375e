#!/usr/bin/env bash
# arm64 smoke test: install pievse into a Debian bookworm arm64 root (debootstrap + qemu-user-static) exactly as the
# SD-card image does, and run it there under emulation.
#
#   sudo deploy/smoke-arm64.sh            # as root: debootstrap, chroot and binfmt need it
#
# Steps (each one prints its time; any failure stops the script with a non-zero exit):
#   1. host tools: debootstrap, qemu-user-static, binfmt-support (apt-get installs missing ones); the qemu-aarch64
#      binfmt handler is registered (binfmt_misc mounted if needed).
#   2. an arm64 bookworm root with python3, python3-venv, python3-pyscard, libpcsclite1 and systemd (for
#      systemctl and systemd-sysusers). The first run debootstraps it and keeps a tarball in $EVSE_SMOKE_CACHE
#      (default /var/cache/evse-smoke); later runs unpack that tarball.
#   3. the image stage's host side, deploy/image/stage-evse/00-evse/01-run.sh, with ROOTFS_DIR pointing at that root
#      and files/src a snapshot of this checkout (git-tracked and untracked, non-ignored files), on top of a
#      pi-gen-like cmdline.txt and config.txt.
#   4. the stage's chroot side, 02-run-chroot.sh, inside the chroot under qemu, as pi-gen runs it (bash -e on
#      stdin): venv with --system-site-packages, EVSE_PREFIX=/ install.sh, bytecode, systemd-sysusers, units
#      enabled. Why --system-site-packages: PyPI has no aarch64 wheel of pyscard, so the `pi` extra would compile it
#      (swig, libpcsclite-dev, gcc under qemu); Debian's python3-pyscard satisfies the requirement instead. pip's
#      cache is kept in the cache directory, so a second run downloads nothing.
#   5. `evse --version` and `evse config check /etc/evse/config.toml` inside the chroot.
#   6. the first-boot program: the unedited template is left alone; a sample evse-setup.toml is merged (config
#      valid, Wi-Fi keyfile mode 0600, the file renamed with its secrets removed) and a second run is a no-op.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EVSE_SMOKE_CACHE:-/var/cache/evse-smoke}
MIRROR=${EVSE_SMOKE_MIRROR:-}  # empty: debootstrap's default Debian mirror
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pyscard,libpcsclite1,ca-certificates,systemd
# The tarball name carries the package list, so changing the list makes a new root.
BASE_TAR="$CACHE/$SUITE-arm64-$(echo "$INCLUDE" | md5sum | cut -c1-8).tar"
ROOT="$CACHE/root"
STAGE="$CACHE/stage"
PIP_MOUNT=/var/cache/pip-host  # inside the root: 02-run-chroot.sh deletes /root/.cache/pip
START=$EPOCHREALTIME

die() {
    echo "smoke-arm64: FAILED: $*" >&2
    exit 1
}

# Not `"$@" || die`: inside a || list bash ignores set -e for the whole function. Called plainly, any failing
# command stops the script, and the ERR trap (inherited by functions: set -E) names the step and the line.
CURRENT=""
set -E
trap 'echo "smoke-arm64: FAILED in step \"$CURRENT\" (line $LINENO: $BASH_COMMAND)" >&2' ERR

step() {
    local t0 t1
    CURRENT=$1
    shift
    echo "==> $CURRENT"
    t0=$EPOCHREALTIME
    "$@"
    t1=$EPOCHREALTIME
    awk -v n="$CURRENT" -v a="$t0" -v b="$t1" 'BEGIN { printf "<== %-28s %6.1f s\n", n, b - a }'
}

# Mount points inside the root; unmounted on any exit, and checked before the root is ever deleted.
unmount_all() {
    local m
    for m in "$ROOT$PIP_MOUNT" "$ROOT/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m"; fi
    done
}
trap unmount_all EXIT

in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_CACHE_DIR="$PIP_MOUNT" "$@"
}

host_tools() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it)"
    local missing=""
    command -v debootstrap >/dev/null || missing="$missing debootstrap"
    command -v qemu-aarch64-static >/dev/null || missing="$missing qemu-user-static"
    command -v update-binfmts >/dev/null || missing="$missing binfmt-support"
    if [ -n "$missing" ]; then
        echo "installing:$missing"
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc: arm64 binaries cannot run in a chroot here"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
        die "cannot register the qemu-aarch64 binfmt handler"
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "the qemu-aarch64 binfmt handler is disabled"
    sed -n 's/^\(interpreter\|flags\).*/  binfmt &/p' /proc/sys/fs/binfmt_misc/qemu-aarch64
}

make_root() {
    mkdir -p "$CACHE"
    if mountpoint -q "$ROOT/proc" || mountpoint -q "$ROOT$PIP_MOUNT"; then
        die "$ROOT still has mounts: not deleting it"
    fi
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    if [ -f "$BASE_TAR" ]; then
        echo "unpacking the cached root $BASE_TAR"
        tar -C "$ROOT" -xf "$BASE_TAR"
    else
        echo "debootstrap --arch=arm64 $SUITE (first run; cached as $BASE_TAR)"
        # shellcheck disable=SC2086 # no mirror argument at all when none is set
        debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" $MIRROR \
            >"$CACHE/debootstrap.log" 2>&1 || {
            tail -n 30 "$CACHE/debootstrap.log" >&2
            return 1
        }
        tar -C "$ROOT" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
    fi
    # The F (fix-binary) flag makes the copy unnecessary; without it the kernel looks for the path in the chroot.
    install -D -m 0755 "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/qemu-aarch64-static"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # pip inside the chroot trusts what the host trusts (a TLS-inspecting proxy's CA, for one).
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"
    mount -t proc proc "$ROOT/proc"
    [ "$(in_root uname -m)" = aarch64 ] || die "the chroot does not run aarch64 binaries"
    in_root python3 --version
}

stage_host() {
    # What pi-gen's stage1 leaves on the boot partition.
    mkdir -p "$ROOT/boot/firmware"
    echo "console=serial0,115200 console=tty1 root=ROOTDEV rootfstype=ext4 fsck.repair=yes rootwait resize" \
        >"$ROOT/boot/firmware/cmdline.txt"
    printf '# stage1\ndtparam=audio=on\n[cm4]\notg_mode=1\n[all]\n' >"$ROOT/boot/firmware/config.txt"
    rm -rf "$STAGE"
    cp -a "$SRC/deploy/image/stage-evse/00-evse" "$STAGE"
    mkdir -p "$STAGE/files/src"
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -T - -cf -) | tar -C "$STAGE/files/src" -xf -
    (cd "$STAGE" && ROOTFS_DIR="$ROOT" bash -e ./01-run.sh)
    if grep -q ' resize' "$ROOT/boot/firmware/cmdline.txt"; then die "resize left in cmdline.txt"; fi
    grep -qx 'dtoverlay=pwm-2chan' "$ROOT/boot/firmware/config.txt" || die "config.txt has no PWM overlay"
    grep -q '^LABEL=EVSEDATA' "$ROOT/etc/fstab" || die "fstab has no data partition"
}

stage_chroot() {
    mkdir -p "$CACHE/pip" "$ROOT$PIP_MOUNT"
    mount --bind "$CACHE/pip" "$ROOT$PIP_MOUNT"
    in_root bash -e <"$STAGE/02-run-chroot.sh"
    # The pi extra's pyscard comes from Debian (system site-packages) and must find libpcsclite.
    in_root /opt/evse/venv/bin/python -c 'import ctypes, smartcard.scard, firmware
ctypes.CDLL("libpcsclite.so.1")
print("pyscard", smartcard.__file__, "and libpcsclite.so.1 load")'
    local link
    for link in multi-user.target.wants/evse.service multi-user.target.wants/evse-firstboot.service \
        multi-user.target.wants/evse-overlay.service local-fs.target.wants/evse-datapart.service; do
        [ -L "$ROOT/etc/systemd/system/$link" ] || die "$link is not enabled"
    done
    grep -q '^evse:' "$ROOT/etc/passwd" || die "no evse user"
    [ "$(in_root stat -c %G /etc/evse/config.toml)" = evse ] || die "/etc/evse/config.toml is not group evse"
    [ ! -e "$ROOT/root/evse-src" ] || die "the source was left in the image"
    local site
    site=$(echo "$ROOT"/opt/evse/venv/lib/python3*/site-packages)
    ls "$site"/firmware/__pycache__/*.pyc >/dev/null || die "no precompiled bytecode"
}

run_evse() {
    local version
    version=$(in_root /opt/evse/venv/bin/evse --version)
    echo "$version"
    case "$version" in evse\ *) ;; *) die "unexpected version output: $version" ;; esac
    in_root /opt/evse/venv/bin/evse config check /etc/evse/config.toml
}

run_firstboot() {
    local fb=(/opt/evse/venv/bin/python -m firmware.firstboot --boot /boot/firmware --config /etc/evse/config.toml --root /)
    in_root "${fb[@]}"  # the unedited template the stage put there: nothing to apply, and it stays
    cmp -s "$ROOT/boot/firmware/evse-setup.toml" "$SRC/deploy/image/evse-setup.toml" || die "the template was changed"
    cat >"$ROOT/boot/firmware/evse-setup.toml" <<'EOF'
[charger]
id = "CP-SMOKE-01"
[ocpp]
url = "wss://csms.example.com/ocpp"
authorization_key = "smoke-test-key-0123456789"
security_profile = 2
[wifi]
country = "DE"
ssid = "Garage \"5G\""
psk = "correct horse battery"
[system]
hostname = "evse-smoke"
timezone = "Europe/Berlin"
EOF
    in_root "${fb[@]}"
    in_root /opt/evse/venv/bin/evse config check /etc/evse/config.toml
    grep -qx 'id = "CP-SMOKE-01"' "$ROOT/etc/evse/config.toml" || die "charger id not merged"
    grep -qx 'url = "wss://csms.example.com/ocpp"' "$ROOT/etc/evse/config.toml" || die "CSMS URL not merged"
    local keyfile="$ROOT/etc/NetworkManager/system-connections/evse-wifi.nmconnection"
    [ "$(stat -c %a "$keyfile")" = 600 ] || die "$keyfile is not mode 0600"
    grep -q '^psk=correct horse battery$' "$keyfile" || die "psk missing from $keyfile"
    [ ! -e "$ROOT/boot/firmware/evse-setup.toml" ] || die "evse-setup.toml was not renamed"
    if grep -q 'correct horse\|smoke-test-key' "$ROOT/boot/firmware/evse-setup.applied.toml"; then
        die "secrets left in evse-setup.applied.toml"
    fi
    [ "$(cat "$ROOT/etc/hostname")" = evse-smoke ] || die "hostname not set"
    grep -q 'cfg80211.ieee80211_regdom=DE' "$ROOT/boot/firmware/cmdline.txt" || die "Wi-Fi country not set"
    in_root "${fb[@]}"
    echo "first boot applied; a second run changed nothing"
}

step "host tools + binfmt" host_tools
step "arm64 root" make_root
step "stage host side (01-run.sh)" stage_host
step "stage chroot (02-run-chroot)" stage_chroot
step "evse --version, config check" run_evse
step "first-boot program" run_firstboot
awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "smoke-arm64: OK in %.1f s\n", b - a }'
