//! restorefs: mount backups read-only. Every restore point of every backup set under a folder
//! becomes a folder of its own, served lazily from the backup files.
//!
//! Data flows one way: `scan` walks SOURCE with the formats it is given (`format`, plugged in
//! through `model`), the `catalog` of sets it finds makes the `tree` of restore points,
//! `blockmap`/`image` resolve what each byte of a point is, and the front ends (`fuse`, `nbd`,
//! `export`, `ls`, `verify`) read through the shared `vfs` nodes. ARCHITECTURE.md has the map.
#![deny(unsafe_code)]

pub mod blockmap;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod export;
pub mod format;
pub mod fuse;
pub mod image;
pub mod indexcache;
pub mod inside;
pub mod lz4;
pub mod model;
pub mod mount;
pub mod mountinfo;
pub mod nbd;
pub mod prune;
pub mod scan;
pub mod storage;
pub mod sync;
pub mod sys;
pub mod timefmt;
pub mod tree;
pub mod vfs;
pub mod workdir;
