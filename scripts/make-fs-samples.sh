#!/usr/bin/env bash
# Makes the small FAT12/16/32 and NTFS images the fuzz harness damages (tests/data/fs/*.img.gz)
# with the file systems' own tools: mkfs.vfat + mcopy (dosfstools, mtools) and mkntfs +
# ntfs-3g (run as root: ntfs-3g mounts the NTFS image to fill it). Committed, so that a fuzz
# case repeats from its seed on any machine; run again only to change what they hold.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/tests/data/fs"
work="$(mktemp -d)"
trap 'mountpoint -q "$work/mnt" && umount "$work/mnt"; rm -rf "$work"' EXIT
export MTOOLS_SKIP_CHECK=1 LC_ALL=C.UTF-8 TZ=UTC
mkdir -p "$out" "$work/src/Folder with a long name/nested" "$work/mnt"

# `N` bytes of the line `TEXT` repeated (compressible: the images are committed).
text() { yes "$1" | head -c "$2" || true; }

# The tree: long and Unicode names, a nested folder, a folder of 40 entries, an empty file.
text "data file" 20000 >"$work/src/Folder with a long name/nested/Data file.bin"
text "Ünïcödé" 700 >"$work/src/Ünïcödé.txt"
: >"$work/src/empty"
for i in $(seq 0 39); do
    text "entry $i" $((i * 37)) >"$work/src/Folder with a long name/entry number $i.txt"
done
find "$work/src" -exec touch -d @1700000000 {} +

# FAT: one-sector clusters; mtools wants FAT32 to have 65,525 clusters, so its image is cut
# after the files (the rest is free space).
for bits in 12 16 32; do
    case $bits in 12) kib=1200 ;; 16) kib=2100 ;; *) kib=36000 ;; esac
    img="$work/fat$bits.img"
    mkfs.vfat -C -F "$bits" -s 1 -i 12345678 "$img" "$kib" >/dev/null
    mcopy -s -m -Q -i "$img" "$work/src/"* ::/
    truncate -s 1500K "$img"
    gzip -9n <"$img" >"$out/fat$bits.img.gz"
done

# NTFS: also a resident file, a hard link, and a sparse file whose thousand runs continue
# through an attribute list.
img="$work/ntfs.img"
truncate -s 6M "$img"
mkntfs -F -f -q "$img"
ntfs-3g -o no_detach "$img" "$work/mnt" &
daemon=$!
until mountpoint -q "$work/mnt"; do sleep 0.1; done
cp -a "$work/src/." "$work/mnt/"
printf resident >"$work/mnt/small"
ln "$work/mnt/small" "$work/mnt/Folder with a long name/nested/link"
truncate -s 32M "$work/mnt/runs.bin"
for i in $(seq 0 255); do
    text "run $i" 4096 | dd of="$work/mnt/runs.bin" bs=4096 seek=$((i * 32)) conv=notrunc status=none
done
umount "$work/mnt"
# ntfs-3g writes everything back before it exits.
wait "$daemon"
gzip -9n <"$img" >"$out/ntfs.img.gz"
ls -l "$out"
