//! The NBD front end: serves files of the mount tree (disk images of restore points) over the
//! Network Block Device protocol, read-only, so that `qemu-img`, `nbdcopy`, a hypervisor or
//! the kernel's nbd client can read a point without copying it. Written on `std` threads: the
//! `nbd` crate serves neither structured replies nor block status.
//!
//! `wire` holds the protocol's numbers and message encoding, `handshake` the option haggling,
//! `transmission` the command loop, `read` the read replies, `exports` what names resolve to,
//! `server` the listening socket and its connections.

mod exports;
mod handshake;
mod read;
mod server;
mod transmission;
mod wire;

pub use exports::Exports;
pub use server::{Address, Listener, Server, Stream, serve_connection};

/// Well-known NBD port.
pub const DEFAULT_PORT: u16 = 10809;
