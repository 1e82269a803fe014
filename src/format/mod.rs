//! Backup formats. Each one parses its files into plain data and implements the
//! [`Format`](crate::model::Format) trait of `model`; that trait is the only place a format plugs
//! in, and [`all`] the only list of formats.

pub mod clightning;
pub mod freezer;
pub mod virtnbd;

use std::sync::Arc;

use crate::model::Format;

/// Settings that concern one format each, given to the formats when [`all`] makes them.
#[derive(Clone, Default)]
pub struct FormatOptions {
    /// Freezer's encryption password (`--freezer-key`), if given.
    pub freezer_key: Option<Arc<Vec<u8>>>,
    /// Time and size budget of replaying Core Lightning logs (and its cancel flag).
    pub sql: clightning::SqlLimits,
}

/// Every format, in the order they look at a folder (earlier ones claim files first).
pub fn all(options: &FormatOptions) -> Vec<Box<dyn Format>> {
    vec![
        Box::new(virtnbd::Virtnbd),
        Box::new(freezer::Freezer::new(options.freezer_key.clone())),
        Box::new(clightning::Clightning::new(options.sql.clone())),
    ]
}
