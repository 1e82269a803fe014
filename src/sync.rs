//! The synchronisation types of the concurrent parts (the cache, LZ4 decoding): the standard
//! library's, or shuttle's when the model checker runs (`cargo test --features shuttle`), so
//! that the same code is explored under many thread schedules.

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Arc, Mutex, MutexGuard, RwLock, atomic};
#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Arc, Mutex, MutexGuard, RwLock, atomic};
