//! The user story end to end: an ext4 disk is backed up (a full stream, then incrementals of the
//! changed extents, written by the test's own writer), changed through a loop mount in between;
//! each point's image, served by restorefs, is loop-mounted and every file compared with what it
//! was at that point. Uncompressed and lz4.

mod common;

use std::os::unix::fs::FileExt;

use common::writer::{Frame, StreamSpec};
use common::*;

const BLOCK: usize = 64 << 10;
const SIZE: u64 = 32 << 20;

/// Runs of 64 KiB blocks where `pick(block index)` holds, merged: (offset, length).
fn runs(blocks: usize, pick: impl Fn(usize) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in (0..blocks).filter(|&b| pick(b)) {
        let off = (b * BLOCK) as u64;
        match out.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += BLOCK as u64,
            _ => out.push((off, BLOCK as u64)),
        }
    }
    out
}

fn block(img: &[u8], b: usize) -> &[u8] {
    &img[b * BLOCK..(b + 1) * BLOCK]
}

/// A full stream: data frames for blocks with data, zero frames for all-zero blocks.
fn full_stream(img: &[u8], lz4: Option<usize>) -> StreamSpec {
    let mut s = StreamSpec::new("vda", SIZE, "2026-05-01T10:00:00.000001");
    s.lz4_chunk = lz4;
    let n = img.len() / BLOCK;
    let zero = |b: usize| block(img, b).iter().all(|&x| x == 0);
    let mut frames: Vec<(u64, Frame)> = runs(n, |b| !zero(b))
        .into_iter()
        .map(|(o, l)| {
            (
                o,
                Frame::Data(o, img[o as usize..(o + l) as usize].to_vec()),
            )
        })
        .collect();
    frames.extend(
        runs(n, zero)
            .into_iter()
            .map(|(o, l)| (o, Frame::Zero(o, l))),
    );
    frames.sort_by_key(|f| f.0);
    s.frames = frames.into_iter().map(|f| f.1).collect();
    s
}

/// An incremental stream of the blocks that changed from `old` to `new`.
fn inc_stream(old: &[u8], new: &[u8], n: usize, lz4: Option<usize>) -> StreamSpec {
    let mut s = StreamSpec::new("vda", SIZE, &format!("2026-05-0{}T10:00:00.000001", n + 1));
    s.lz4_chunk = lz4;
    s.incremental = true;
    s.checkpoint = format!("virtnbdbackup.{n}");
    s.parent = format!("virtnbdbackup.{}", n - 1);
    s.frames = runs(old.len() / BLOCK, |b| block(old, b) != block(new, b))
        .into_iter()
        .map(|(o, l)| Frame::Data(o, new[o as usize..(o + l) as usize].to_vec()))
        .collect();
    s
}

#[test]
fn get_files_back_from_every_point_of_an_ext4_chain() {
    if !fuse_available("get_files_back_from_every_point_of_an_ext4_chain") {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    let src = t.join("src");
    std::fs::create_dir_all(src.join("dir1/sub")).unwrap();
    std::fs::write(src.join("a.bin"), random_bytes(1, 300_000)).unwrap();
    std::fs::write(src.join("b.txt"), b"to be deleted\n".repeat(100)).unwrap();
    std::fs::write(src.join("dir1/c.bin"), random_bytes(2, 1 << 20)).unwrap();
    std::fs::write(src.join("dir1/sub/d.txt"), b"deep file\n").unwrap();
    let img = t.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(SIZE).unwrap();
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let mut snaps = vec![std::fs::read(&img).unwrap()];
    let mut want = vec![file_hashes(&src)];

    let mnt = t.join("rw");
    std::fs::create_dir(&mnt).unwrap();
    let (m, i) = (mnt.to_str().unwrap(), img.to_str().unwrap());
    // Round 1: rewrite part of a file, add one, delete one, rename a folder.
    tool("mount", &["-o", "loop", i, m]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("a.bin"))
        .unwrap();
    f.write_all_at(&random_bytes(3, 20_000), 100_000).unwrap();
    drop(f);
    std::fs::write(mnt.join("new.bin"), random_bytes(4, 150_000)).unwrap();
    std::fs::remove_file(mnt.join("b.txt")).unwrap();
    std::fs::rename(mnt.join("dir1"), mnt.join("dir2")).unwrap();
    want.push(file_hashes(&mnt));
    tool("umount", &[m]);
    snaps.push(std::fs::read(&img).unwrap());
    // Round 2: append, delete in a subfolder, add in a subfolder.
    tool("mount", &["-o", "loop", i, m]);
    let mut grown = std::fs::read(mnt.join("new.bin")).unwrap();
    grown.extend(random_bytes(5, 70_000));
    std::fs::write(mnt.join("new.bin"), &grown).unwrap();
    std::fs::remove_file(mnt.join("dir2/sub/d.txt")).unwrap();
    std::fs::write(mnt.join("dir2/sub/e.txt"), b"added later\n").unwrap();
    want.push(file_hashes(&mnt));
    tool("umount", &[m]);
    snaps.push(std::fs::read(&img).unwrap());
    assert_ne!(want[0], want[1]);
    assert_ne!(want[1], want[2]);

    let backups = t.join("backups");
    for (set, lz4) in [("vm-plain", None), ("vm-lz4", Some(1 << 20))] {
        let dir = backups.join(set);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("vda.full.data"),
            full_stream(&snaps[0], lz4).to_bytes(),
        )
        .unwrap();
        for n in 1..snaps.len() {
            let s = inc_stream(&snaps[n - 1], &snaps[n], n, lz4);
            std::fs::write(
                dir.join(format!("vda.inc.virtnbdbackup.{n}.data")),
                s.to_bytes(),
            )
            .unwrap();
        }
    }

    let served = Mounted::new(&backups, &[]);
    let doc = ls_json(&backups);
    let lp = t.join("ro");
    std::fs::create_dir(&lp).unwrap();
    for set in doc["sets"].as_array().unwrap() {
        let points = set["points"].as_array().unwrap();
        assert_eq!(points.len(), 3);
        for (n, p) in points.iter().enumerate() {
            let image = served.join(&format!(
                "{}/{}/vda.raw",
                set["path"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            ));
            tool(
                "mount",
                &[
                    "-o",
                    "loop,ro,noload",
                    image.to_str().unwrap(),
                    lp.to_str().unwrap(),
                ],
            );
            let got = file_hashes(&lp);
            tool("umount", &[lp.to_str().unwrap()]);
            assert_eq!(got, want[n], "{} point {n}", set["path"]);
        }
    }
}
