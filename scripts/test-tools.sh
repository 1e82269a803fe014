#!/usr/bin/env bash
# Installs the tools the tests drive for real, when missing (as root, with apt-get): scripts/test.sh
# and CI run it first, so that one command runs the tests on a fresh Debian machine.
set -euo pipefail

# Tools the tests drive for real, as `command:package`; Debian ships most of them, whatever is
# missing is installed.
tools=(
    mkfs.ext4:e2fsprogs debugfs:e2fsprogs losetup:mount              # ext4 images, loop mounts
    sgdisk:gdisk sfdisk:fdisk mkfs.vfat:dosfstools mkswap:util-linux  # partitioned disks
    mcopy:mtools mkntfs:ntfs-3g setfattr:attr                         # FAT and NTFS images
    runuser:util-linux                                                # export as a plain user
    mount.fuse3:fuse3 unshare:util-linux       # `mount -t fuse.restorefs` in a private namespace
    tar:tar bzip2:bzip2 xz:xz-utils openssl:openssl python3:python3  # Freezer backups
    qemu-img:qemu-utils qemu-io:qemu-utils nbdinfo:libnbd-bin        # NBD clients
)
need=()
for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
# The S3 server the S3 tests start (tests/s3server): moto in a Python venv of its own, at the
# place the tests look (RESTOREFS_MOTO_VENV overrides it), pinned so that every run tests the same.
moto_version=5.2.5
moto_venv="${RESTOREFS_MOTO_VENV:-/opt/restorefs-test/moto}"
moto_ok() {
    "$moto_venv/bin/python" -c "import sys, boto3, moto; sys.exit(moto.__version__ != '$moto_version')" \
        2>/dev/null
}
moto_ok || python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! moto_ok && { [ "$(id -u)" = 0 ] || [ -n "${RESTOREFS_MOTO_VENV:-}" ]; }; then
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
    moto_ok
fi
