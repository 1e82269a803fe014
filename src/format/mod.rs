//! Backup formats. Each one parses its files into plain data and implements the
//! [`Format`](crate::model::Format) trait of `model`; that trait is the only place a format plugs
//! in, and [`all`] the only list of formats.

pub mod clightning;
pub mod freezer;
pub mod virtnbd;

use crate::model::Format;

/// Every format, in the order they look at a folder (earlier ones claim files first).
pub fn all() -> Vec<Box<dyn Format>> {
    vec![
        Box::new(virtnbd::Virtnbd),
        Box::new(freezer::Freezer),
        Box::new(clightning::Clightning),
    ]
}
