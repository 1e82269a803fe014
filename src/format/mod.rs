//! Backup formats. Each one parses its files into plain data and implements the catalog's
//! [`Format`](crate::catalog::Format) trait; that trait is the only place a format plugs in.

pub mod clightning;
pub mod freezer;
pub mod virtnbd;

use crate::catalog::Format;

/// Every format, in the order they look at a folder (earlier ones claim files first).
pub fn all() -> Vec<Box<dyn Format>> {
    vec![
        Box::new(virtnbd::Virtnbd),
        Box::new(freezer::Freezer),
        Box::new(clightning::Clightning),
    ]
}
