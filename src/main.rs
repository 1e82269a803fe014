//! The `restorefs` binary: see `cli`.
use std::process::ExitCode;

fn main() -> ExitCode {
    restorefs::sys::return_large_frees();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,fuser::session=error"),
    )
    .init();
    restorefs::cli::run()
}
