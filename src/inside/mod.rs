//! Files inside disk images: file systems read in user space, served as `vfs` nodes.

pub mod device;
pub mod fat;
pub mod ntfs;
