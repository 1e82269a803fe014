//! A short fixed-seed fuzz run per format (see `tests/fuzzing`): damaged and hostile copies of
//! the sample backups must give errors, never a panic, a hang, unbounded memory or a write into
//! SOURCE. `RESTOREFS_FUZZ_FORMATS=virtnbd` limits the run to some formats; `scripts/fuzz.sh`
//! runs long.

mod fuzzing;

use std::sync::Mutex;
use std::time::Duration;

use fuzzing::{Format, Limits};

/// The run's seed: fixed, so a failure here repeats (each finding prints its case's seed).
const SEED: u64 = 0x05ee_d0ff_0220;

/// Cases run one at a time: peak memory and time are measured per process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fixed_run(format: Format, iterations: u64) {
    if !Format::from_env().contains(&format) {
        eprintln!(
            "skipped: RESTOREFS_FUZZ_FORMATS does not list {}",
            format.name()
        );
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let limits = Limits {
        // Debug builds are slow; a hang is still far beyond this.
        timeout: Duration::from_secs(10),
        read_per_file: 2 << 20,
        read_per_case: 8 << 20,
        points_per_dir: 4,
        ..Limits::default()
    };
    let report = fuzzing::run(
        format,
        SEED,
        iterations,
        None,
        &limits,
        None,
        &mut |i, _| {
            eprintln!("case {i} done");
        },
    );
    eprintln!(
        "{}: {} cases in {:.1?}",
        format.name(),
        report.executions,
        report.elapsed
    );
    let findings: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    assert!(
        findings.is_empty(),
        "{} finding(s):\n{}",
        findings.len(),
        findings.join("\n")
    );
}

#[test]
fn virtnbd_survives_damaged_streams() {
    fixed_run(Format::Virtnbd, 130);
}

#[test]
fn clightning_survives_damaged_logs() {
    fixed_run(Format::Clightning, 60);
}

#[test]
fn freezer_survives_damaged_backups() {
    fixed_run(Format::Freezer, 500);
}

#[test]
fn nbd_survives_damaged_client_streams() {
    fixed_run(Format::Nbd, 150);
}

#[test]
fn inside_survives_damaged_tables_and_file_systems() {
    fixed_run(Format::Inside, 150);
}

#[test]
fn fat_survives_damaged_file_systems() {
    fixed_run(Format::Fat, 150);
}

#[test]
fn ntfs_survives_damaged_file_systems() {
    fixed_run(Format::Ntfs, 150);
}

#[test]
fn cases_repeat_from_their_seed() {
    for format in Format::ALL {
        let a = fuzzing::prepare(format, 42);
        let b = fuzzing::prepare(format, 42);
        assert_eq!(a.mutations, b.mutations, "{}", format.name());
        let files = |c: &fuzzing::Case| {
            let mut v: Vec<(String, String)> = Vec::new();
            let mut todo = vec![c.source()];
            while let Some(d) = todo.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        todo.push(p);
                    } else {
                        let rel = p.strip_prefix(c.source()).unwrap().display().to_string();
                        // Hostile SQL names the case's own folder: compare without it.
                        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                            .replace(&c.tmp.path().display().to_string(), "TMP");
                        v.push((rel, text));
                    }
                }
            }
            v.sort();
            v
        };
        assert!(
            files(&a) == files(&b),
            "{}: same seed, different files",
            format.name()
        );
    }
}
