//! The FUSE front end. [`Inodes`] holds what the kernel interface needs (inode numbers,
//! listings) and `attr` what `stat` and `lseek` answer, as plain, kernel-free code; handles
//! hold per-open state; [`FuseFs`] only translates kernel requests into calls on them and
//! errors into errnos.

mod adapter;
mod attr;
mod handles;
mod inodes;
mod prune;

pub use adapter::{FuseFs, Owner};
pub use inodes::{Inodes, ROOT};
pub use prune::Pruner;
