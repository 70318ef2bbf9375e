#!/bin/bash -e
# pi-gen, host side (cwd = this directory): the package source and the image's files into the root file system.
# files/src is a snapshot of the repository that deploy/image/build.sh puts here.
SRC=files/src
IMG="${SRC}/deploy/image"
if [ ! -f "${SRC}/pyproject.toml" ]; then
	echo "stage-evse: ${PWD}/${SRC} has no pievse checkout: run deploy/image/build.sh" >&2
	exit 1
fi

# The source for the chroot step. Not under /tmp: on_chroot mounts a fresh tmpfs there.
rm -rf "${ROOTFS_DIR}/root/evse-src"
cp -a "${SRC}" "${ROOTFS_DIR}/root/evse-src"

install -D -m 0755 "${IMG}/evse-datapart" "${ROOTFS_DIR}/opt/evse/sbin/evse-datapart"
for unit in evse-datapart.service evse-firstboot.service evse-overlay.service; do
	install -D -m 0644 "${IMG}/${unit}" "${ROOTFS_DIR}/etc/systemd/system/${unit}"
done
install -D -m 0644 "${IMG}/evse.service.d/image.conf" "${ROOTFS_DIR}/etc/systemd/system/evse.service.d/image.conf"
install -D -m 0644 "${IMG}/99-evse.conf" "${ROOTFS_DIR}/etc/systemd/journald.conf.d/99-evse.conf"
install -D -m 0644 "${SRC}/deploy/README.md" "${ROOTFS_DIR}/opt/evse/share/deploy/README.md"
install -D -m 0644 "${IMG}/evse-setup.toml" "${ROOTFS_DIR}/boot/firmware/evse-setup.toml"

# The data partition (created at first boot by evse-datapart) and the bind mounts onto it.
if ! grep -q EVSEDATA "${ROOTFS_DIR}/etc/fstab"; then
	cat "${IMG}/fstab.evse" >> "${ROOTFS_DIR}/etc/fstab"
fi
mkdir -p "${ROOTFS_DIR}/data" "${ROOTFS_DIR}/var/lib/evse" "${ROOTFS_DIR}/var/log/journal" \
	"${ROOTFS_DIR}/etc/NetworkManager/system-connections"

# I2C, UART and PWM overlays (deploy/hardware.md).
if ! grep -q '^# pievse' "${ROOTFS_DIR}/boot/firmware/config.txt"; then
	cat "${IMG}/config.txt.evse" >> "${ROOTFS_DIR}/boot/firmware/config.txt"
fi
# Keep the root partition at its image size: the initramfs would grow it over the whole card at first boot
# (`resize`), leaving no room for the data partition.
sed -i 's/ resize\b//' "${ROOTFS_DIR}/boot/firmware/cmdline.txt"
# pi-gen soft-blocks Wi-Fi when no WPA_COUNTRY is given; the country comes from evse-setup.toml instead.
for state in "${ROOTFS_DIR}"/var/lib/systemd/rfkill/*:wlan; do
	if [ -e "${state}" ]; then echo 0 > "${state}"; fi
done
