//! The `restorefs` binary: see `cli`.
use std::process::ExitCode;

fn main() -> ExitCode {
    restorefs::sys::return_large_frees();
    restorefs::cli::run()
}
