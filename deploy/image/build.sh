#!/usr/bin/env bash
# Build the pievse SD-card image: Raspberry Pi OS Lite arm64 (pi-gen stage0..stage2) plus deploy/image/stage-evse.
#
#   EVSE_IMAGE_PASSWORD='...' [EVSE_IMAGE_SSH_KEY='ssh-ed25519 ...'] deploy/image/build.sh [--native]
#
# Clones pi-gen at a pinned ref into $EVSE_IMAGE_WORK (default build/image), copies the stage and a snapshot of
# this checkout (git-tracked and untracked, non-ignored files) into it, and runs pi-gen's build-docker.sh
# (--native: its build.sh, as root on a Debian host with pi-gen's dependencies). The image lands in
# $EVSE_IMAGE_WORK/pi-gen/deploy/*-pievse-evse.img.xz. On x86 hosts qemu-user-static and binfmt-support are needed.
# The first user is `technician`; EVSE_IMAGE_PASSWORD is required, EVSE_IMAGE_SSH_KEY makes SSH key-only.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PI_GEN_REPO=${PI_GEN_REPO:-https://github.com/RPi-Distro/pi-gen.git}
# The last Bookworm release tag of pi-gen's arm64 line; its stage1 cmdline.txt has `resize` (checked below).
PI_GEN_REF=${PI_GEN_REF:-2025-05-13-raspios-bookworm-arm64}
WORK=${EVSE_IMAGE_WORK:-$SRC/build/image}
PI_GEN="$WORK/pi-gen"
NATIVE=0
[ "${1:-}" = --native ] && NATIVE=1

die() {
    echo "build.sh: $*" >&2
    exit 1
}

[ -n "${EVSE_IMAGE_PASSWORD:-}" ] || die "set EVSE_IMAGE_PASSWORD (the technician user's password)"
mkdir -p "$WORK"
if [ ! -d "$PI_GEN/.git" ]; then
    git clone --depth 1 --branch "$PI_GEN_REF" "$PI_GEN_REPO" "$PI_GEN"
else
    git -C "$PI_GEN" fetch --depth 1 origin "refs/tags/$PI_GEN_REF:refs/tags/$PI_GEN_REF" ||
        git -C "$PI_GEN" fetch --depth 1 origin "$PI_GEN_REF"
    git -C "$PI_GEN" checkout --force "$PI_GEN_REF" 2>/dev/null || git -C "$PI_GEN" checkout --force FETCH_HEAD
fi
echo "pi-gen $(git -C "$PI_GEN" rev-parse HEAD) ($PI_GEN_REF)"
# The data partition needs the card's free space: the stage drops `resize` from cmdline.txt, which only works
# with the initramfs resize of Bookworm images from late 2023 on.
grep -q ' resize' "$PI_GEN/stage1/00-boot-files/files/cmdline.txt" ||
    die "this pi-gen's cmdline.txt has no 'resize': the data partition setup (stage-evse/00-evse/01-run.sh) needs review"

rm -rf "$PI_GEN/stage-evse"
cp -a "$HERE/stage-evse" "$PI_GEN/stage-evse"
mkdir -p "$PI_GEN/stage-evse/00-evse/files/src"
(cd "$SRC" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) | tar -C "$PI_GEN/stage-evse/00-evse/files/src" -xf -
# stage2 is Raspberry Pi OS Lite: build on it, but export only ours.
touch "$PI_GEN/stage2/SKIP_IMAGES"

{
    cat "$HERE/config"
    printf 'FIRST_USER_PASS=%q\n' "$EVSE_IMAGE_PASSWORD"
    if [ -n "${EVSE_IMAGE_SSH_KEY:-}" ]; then
        printf 'PUBKEY_SSH_FIRST_USER=%q\nPUBKEY_ONLY_SSH=1\n' "$EVSE_IMAGE_SSH_KEY"
    fi
} >"$PI_GEN/config"
chmod 0600 "$PI_GEN/config"

cd "$PI_GEN"
start=$(date +%s)
if [ "$NATIVE" = 1 ]; then
    ./build.sh
else
    CONTINUE=${CONTINUE:-0} ./build-docker.sh
fi
echo "pi-gen finished in $(($(date +%s) - start)) s:"
ls -l "$PI_GEN"/deploy/*evse*.img* 2>/dev/null || die "no image in $PI_GEN/deploy"
