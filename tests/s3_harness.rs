//! The S3 test harness itself: the moto server the S3 tests start stores and serves what the
//! boto3 client uploads, byte for byte (checked against the local files, not against restorefs);
//! the fault-injecting proxy forwards signed requests unchanged and injects each fault as told.

mod common;
mod s3proxy;
mod s3server;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use s3proxy::{Counts, Faults, S3Proxy, http};
use s3server::S3Server;

/// Every file under `dir` as (relative path, size), sorted.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, u64)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), &rel, out);
        } else {
            out.push((rel, e.metadata().unwrap().len()));
        }
    }
}

#[test]
fn uploaded_tree_lists_and_reads_back() {
    let Some(s3) = S3Server::start("uploaded_tree_lists_and_reads_back") else {
        return;
    };
    let local = common::data_dir().join("virtnbd");
    s3.create_bucket("harness");
    s3.upload_dir("harness", "some/prefix", &local);

    let mut expected = Vec::new();
    walk(&local, "", &mut expected);
    expected.sort();
    let listed: Vec<(String, u64)> = s3
        .list("harness", "some/prefix/")
        .into_iter()
        .map(|o| (o.key["some/prefix/".len()..].to_string(), o.size))
        .collect();
    assert_eq!(listed, expected);

    for (rel, _) in expected
        .iter()
        .filter(|(r, _)| r.ends_with(".data"))
        .take(3)
    {
        let got = s3.get("harness", &format!("some/prefix/{rel}"));
        assert_eq!(
            common::sha256(&got),
            common::sha256_file(&local.join(rel)),
            "{rel}"
        );
    }
}

#[test]
fn replace_changes_etag_and_delete_removes() {
    let Some(s3) = S3Server::start("replace_changes_etag_and_delete_removes") else {
        return;
    };
    s3.create_bucket("bkt");
    s3.put("bkt", "k/one", b"first");
    s3.put("bkt", "k/two", b"second");
    let before = s3.list("bkt", "k/");
    assert_eq!(before.len(), 2);
    s3.put("bkt", "k/one", b"replaced");
    let after = s3.list("bkt", "k/");
    assert_eq!(s3.get("bkt", "k/one"), b"replaced");
    assert_ne!(
        before[0].etag, after[0].etag,
        "a new content must get a new ETag"
    );
    assert_eq!(before[1], after[1]);
    s3.delete("bkt", "k/two");
    let keys: Vec<String> = s3.list("bkt", "k/").into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["k/one"]);
}

#[test]
fn missing_venv_fails_outside_skip() {
    // The rule of s3_available, run in a child so that the environment stays this process's.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "probe_missing_venv",
            "--include-ignored",
            "--nocapture",
        ])
        .env("RESTOREFS_MOTO_VENV", "/nonexistent/moto")
        .env("CI", "true")
        .env("RESTOREFS_SKIP_S3", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "CI=true must fail: {err}");
    assert!(err.contains("CI=true: failing"), "{err}");
}

/// Run only by `missing_venv_fails_outside_skip`, in a child with a bad venv.
#[test]
#[ignore]
fn probe_missing_venv() {
    assert!(S3Server::start("probe").is_none());
}

/// One answer read off a kept-alive connection: status, body, and whether the body was whole.
struct Answer {
    status: u16,
    body: Vec<u8>,
    whole: bool,
}

/// Sends an unsigned GET (of a public bucket's object) and reads the answer; `None` when the
/// connection closes before an answer.
fn get(conn: &mut BufReader<TcpStream>, path: &str) -> Option<Answer> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).ok()?;
    let head = http::read_head(conn).ok()??;
    let status = head.start.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head.get("content-length")?.parse().ok()?;
    let mut body = Vec::new();
    let _ = conn.by_ref().take(len as u64).read_to_end(&mut body);
    Some(Answer {
        status,
        whole: body.len() == len,
        body,
    })
}

fn connect(proxy: &S3Proxy) -> BufReader<TcpStream> {
    let c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(c)
}

#[test]
fn proxy_forwards_signed_requests_unchanged() {
    let Some(s3) = S3Server::start("proxy_forwards_signed_requests_unchanged") else {
        return;
    };
    let proxy = S3Proxy::start(s3.addr(), Faults::none(), 1);
    let via = s3.client_via(&proxy.endpoint());
    via.create_bucket("viaproxy");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    via.put("viaproxy", "dir/big", &big);
    via.put("viaproxy", "dir/small", b"small");
    via.make_public("viaproxy");
    // Read back directly from the server, and through the proxy.
    assert_eq!(s3.get("viaproxy", "dir/big"), big);
    assert_eq!(via.get("viaproxy", "dir/big"), big);
    let keys: Vec<String> = via
        .list("viaproxy", "dir/")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["dir/big", "dir/small"]);

    // Several requests on one kept-alive client connection.
    let mut conn = connect(&proxy);
    for _ in 0..3 {
        let a = get(&mut conn, "/viaproxy/dir/small").expect("an answer");
        assert_eq!(
            (a.status, a.body.as_slice(), a.whole),
            (200, &b"small"[..], true)
        );
    }
    let c = proxy.counts();
    assert_eq!(c.requests, c.forwarded, "{c:?}");
    assert_eq!(
        c.dropped + c.delayed + c.internal_errors + c.slow_downs + c.truncated,
        0
    );
}

#[test]
fn proxy_injects_each_fault() {
    let Some(s3) = S3Server::start("proxy_injects_each_fault") else {
        return;
    };
    s3.create_bucket("faulty");
    let object: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    s3.put("faulty", "obj", &object);
    s3.client().make_public("faulty");
    let proxy = S3Proxy::start(s3.addr(), Faults::none(), 7);
    let only = |f: fn(&mut Faults)| {
        let mut faults = Faults::each(0.0);
        f(&mut faults);
        faults
    };

    proxy.set_faults(only(|f| f.drop = 1.0));
    assert!(
        get(&mut connect(&proxy), "/faulty/obj").is_none(),
        "dropped before answering"
    );

    for (set, status, code) in [
        (only(|f| f.internal_error = 1.0), 500, "InternalError"),
        (only(|f| f.slow_down = 1.0), 503, "SlowDown"),
    ] {
        proxy.set_faults(set);
        let mut conn = connect(&proxy);
        let a = get(&mut conn, "/faulty/obj").expect("an error answer");
        assert_eq!(a.status, status);
        let text = String::from_utf8(a.body).unwrap();
        assert!(text.contains(&format!("<Code>{code}</Code>")), "{text}");
    }

    proxy.set_faults(only(|f| f.truncate = 1.0));
    let a = get(&mut connect(&proxy), "/faulty/obj").expect("headers");
    assert_eq!(a.status, 200);
    assert!(!a.whole && a.body.len() < object.len(), "cut short");
    assert_eq!(
        a.body,
        object[..a.body.len()],
        "what arrives is the true prefix"
    );

    let mut delayed = only(|f| f.delay = 1.0);
    delayed.delay_range = (Duration::from_millis(300), Duration::from_millis(300));
    proxy.set_faults(delayed);
    let start = Instant::now();
    let a = get(&mut connect(&proxy), "/faulty/obj").expect("a late answer");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!((a.status, a.whole), (200, true));
    assert_eq!(a.body, object);

    let c = proxy.counts();
    let expected = Counts {
        requests: 5,
        forwarded: 1,
        dropped: 1,
        delayed: 1,
        internal_errors: 1,
        slow_downs: 1,
        truncated: 1,
        upstream_failures: 0,
        body_bytes: c.body_bytes,
    };
    assert_eq!(c, expected);
}

#[test]
fn proxy_fault_fraction_follows_the_seed_and_survives_garbage() {
    let Some(s3) = S3Server::start("proxy_fault_fraction_follows_the_seed") else {
        return;
    };
    s3.create_bucket("mixed");
    s3.put("mixed", "o", b"0123456789");
    s3.client().make_public("mixed");
    let mut faults = Faults::each(0.1);
    faults.delay_range = (Duration::ZERO, Duration::from_millis(5));
    let proxy = S3Proxy::start(s3.addr(), faults, 42);

    // Garbage and a request cut mid-head: closed, never a panic, the proxy goes on.
    for junk in [
        &b"\x00\x01\xff garbage\r\n\r\n"[..],
        b"GET /mixed/o HTTP/1.1\r\nHost",
    ] {
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(junk).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 400"),
            "{rest:?}"
        );
    }

    let mut answered = 0;
    let mut conn = connect(&proxy);
    for _ in 0..200 {
        match get(&mut conn, "/mixed/o") {
            Some(a) if a.status == 200 && a.whole => {
                assert_eq!(a.body, b"0123456789");
                answered += 1;
            }
            Some(a) if a.status == 200 => {
                assert_eq!(a.body, b"01234"[..a.body.len()]);
                conn = connect(&proxy);
            }
            Some(a) => assert!(matches!(a.status, 500 | 503), "{}", a.status),
            None => conn = connect(&proxy),
        }
    }
    let c = proxy.counts();
    assert_eq!(c.requests, 200, "{c:?}");
    assert_eq!(c.forwarded, answered, "{c:?}");
    for (n, kind) in [
        (c.dropped, "dropped"),
        (c.delayed, "delayed"),
        (c.internal_errors, "500"),
        (c.slow_downs, "503"),
        (c.truncated, "truncated"),
    ] {
        assert!((8..=35).contains(&n), "{kind}: {n} of 200 at 10 %: {c:?}");
    }
}
