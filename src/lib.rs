//! restorefs: mount backups read-only. Every restore point of every backup set under a folder
//! becomes a folder of its own, served lazily from the backup files.
//!
//! Data flows one way: formats scan files into plain data (`format`), the `catalog` turns them
//! into restore points, `blockmap`/`image` resolve what each byte of a point is, and the front
//! ends (`fs` for FUSE, `export`, `ls`, `verify`) read through the shared `vfs` tree.
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
pub mod lz4;
pub mod mount;
pub mod mountinfo;
pub mod source;
pub mod sync;
pub mod sys;
pub mod timefmt;
pub mod vfs;
pub mod workdir;
