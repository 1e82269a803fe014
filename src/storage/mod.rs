//! Where backup files are read from. A backup file is a [`Source`]: a file whose byte ranges
//! readers slice, prefetch and copy. Today every source is a local file, memory-mapped
//! read-only; [`Mappings`] keeps the resident pages of all of them within a budget. A remote
//! object store plugs in here, behind the same `Source` calls and the shared cache.

mod local;

pub use local::{Mappings, SMALL_READ, SliceReader, Source};
