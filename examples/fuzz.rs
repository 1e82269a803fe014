//! The long fuzz run (`scripts/fuzz.sh`): the harness of `tests/fuzzing` for as many cases or
//! as long as asked, per format; prints executions and findings, saves failing inputs.
//!
//! `fuzz [--formats virtnbd,clightning,freezer,nbd,inside,fat,ntfs] [--iterations N] [--seconds S] [--seed X]
//!       [--timeout S] [--max-rss MIB] [--out DIR] [--no-verify]`
//! `fuzz --replay FORMAT:SEED [--out DIR]` runs one case again and prints what it did.

#[path = "../tests/fuzzing/mod.rs"]
mod fuzzing;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fuzzing::{Format, Limits};

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "fuzz: {msg}\nusage: fuzz [--formats LIST] [--iterations N] [--seconds S] [--seed X] [--timeout S] [--max-rss MIB] [--out DIR] [--no-verify] | --replay FORMAT:SEED"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut formats = Format::ALL.to_vec();
    let mut iterations = u64::MAX;
    let mut seconds: Option<u64> = None;
    let mut seed = 1u64;
    let mut limits = Limits::default();
    let mut out: Option<PathBuf> = None;
    let mut replay: Option<(Format, u64)> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--formats" => {
                let v = value();
                formats = v.split(',').filter_map(Format::parse).collect();
                if formats.is_empty() {
                    return usage(&format!("no known format in {v:?}"));
                }
            }
            "--iterations" => match parse_u64(&value()) {
                Some(n) => iterations = n,
                None => return usage("--iterations needs a number"),
            },
            "--seconds" => match parse_u64(&value()) {
                Some(n) => seconds = Some(n),
                None => return usage("--seconds needs a number"),
            },
            "--seed" => match parse_u64(&value()) {
                Some(n) => seed = n,
                None => return usage("--seed needs a number"),
            },
            "--timeout" => match parse_u64(&value()) {
                Some(n) => limits.timeout = Duration::from_secs(n),
                None => return usage("--timeout needs seconds"),
            },
            "--max-rss" => match parse_u64(&value()) {
                Some(n) => limits.max_rss = n << 20,
                None => return usage("--max-rss needs MiB"),
            },
            "--out" => out = Some(PathBuf::from(value())),
            "--no-verify" => limits.verify = false,
            "--replay" => {
                let v = value();
                let parsed = v
                    .split_once(':')
                    .and_then(|(f, s)| Some((Format::parse(f)?, parse_u64(s)?)));
                match parsed {
                    Some(r) => replay = Some(r),
                    None => return usage("--replay needs FORMAT:SEED"),
                }
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some((format, s)) = replay {
        let case = fuzzing::prepare(format, s);
        println!("mutations: {}", case.mutations.join("; "));
        drop(case);
        return match fuzzing::run_case(format, s, &limits, out.as_deref()) {
            Ok(stats) => {
                println!("passed: {stats:?}");
                ExitCode::SUCCESS
            }
            Err(f) => {
                println!("{f}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(dir) = &out {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut total = 0;
    for format in formats {
        let mut last = Instant::now();
        let report = fuzzing::run(
            format,
            seed,
            iterations,
            seconds.map(Duration::from_secs),
            &limits,
            out.as_deref(),
            &mut |i, r| {
                if last.elapsed() >= Duration::from_secs(30) {
                    last = Instant::now();
                    eprintln!(
                        "{}: {} cases, {} findings",
                        format.name(),
                        i + 1,
                        r.findings.len()
                    );
                }
            },
        );
        let secs = report.elapsed.as_secs_f64();
        println!(
            "{}: {} executions in {secs:.1} s ({:.1}/s), {} findings{}",
            format.name(),
            report.executions,
            report.executions as f64 / secs.max(1e-9),
            report.findings.len(),
            report
                .stopped
                .as_deref()
                .map(|s| format!(", stopped: {s}"))
                .unwrap_or_default()
        );
        let t = &report.totals;
        println!(
            "  passing cases: {} nodes visited, {} MiB read, {} errors returned",
            t.nodes,
            t.bytes >> 20,
            t.errors
        );
        for f in &report.findings {
            println!("  {f}");
        }
        total += report.findings.len();
    }
    if total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
