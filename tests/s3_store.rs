//! The S3 store against a real S3 server (moto on the loopback, filled by boto3): listings one
//! folder at a time, ranged reads equal to the uploaded bytes, prefetch, single flight, an
//! object replaced while open, clear errors before anything is served, the disk cache and local
//! copies. Request and byte counts come from the store's counters.

mod common;
mod s3proxy;
mod s3server;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use restorefs::cache::Cache;
use restorefs::storage::Store;
use restorefs::storage::s3::{S3Options, S3Store};
use s3server::S3Server;

const MIB: u64 = 1 << 20;

fn env_of(s3: &S3Server) -> impl Fn(&str) -> Option<String> + use<> {
    env_at(s3, &s3.endpoint())
}

fn env_at(s3: &S3Server, endpoint: &str) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = s3.env_for(endpoint).into_iter().collect();
    move |k| map.get(k).cloned()
}

fn options(block_size: u64, prefetch: usize) -> S3Options {
    S3Options {
        block_size,
        prefetch,
        ..S3Options::default()
    }
}

fn connect(s3: &S3Server, source: &str, opts: &S3Options) -> S3Store {
    let cache = Cache::new(256 << 20);
    S3Store::connect_with_env(Path::new(source), opts, cache, &env_of(s3)).unwrap()
}

/// A server with bucket `bkt` holding `data` (seeded bytes, `len` long) at `dir/data.bin`.
fn server_with_object(test: &str, len: usize) -> Option<(S3Server, Vec<u8>)> {
    let s3 = S3Server::start(test)?;
    s3.create_bucket("bkt");
    let data = common::random_bytes(len as u64, len);
    s3.put("bkt", "dir/data.bin", &data);
    Some((s3, data))
}

#[test]
fn folders_are_listed_one_level_at_a_time() {
    let Some(s3) = S3Server::start("folders_are_listed_one_level_at_a_time") else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    let many = local.path().join("set/many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..1100 {
        std::fs::write(many.join(format!("k{i:04}")), b"x").unwrap();
    }
    std::fs::write(local.path().join("set/top.img"), b"12345").unwrap();
    std::fs::create_dir_all(local.path().join("set/sub/deeper")).unwrap();
    std::fs::write(local.path().join("set/sub/deeper/f"), b"1").unwrap();
    s3.create_bucket("bkt");
    s3.upload_dir("bkt", "backups", local.path());

    let store = connect(&s3, "s3://bkt/backups", &S3Options::default());
    let after_connect = store.stats().requests;
    let root = Path::new("s3://bkt/backups");
    let set = store.list(&root.join("set")).unwrap();
    assert_eq!(set.dirs, ["many", "sub"]);
    assert_eq!(set.files.len(), 1);
    assert_eq!(
        (set.files[0].name.as_str(), set.files[0].size),
        ("top.img", 5)
    );
    // One request: the 1100 keys under set/many/ and set/sub/ are not listed.
    assert_eq!(store.stats().requests - after_connect, 1);
    // Listed objects need no HEAD; listings are kept.
    assert_eq!(
        store.stat(&root.join("set/top.img")).unwrap().unwrap().size,
        5
    );
    assert!(store.stat(&root.join("set/none")).unwrap().is_none());
    assert!(store.is_dir(&root.join("set")).unwrap());
    assert_eq!(store.stats().requests - after_connect, 1);
    let keys = store.list(&root.join("set/many")).unwrap();
    assert_eq!(keys.files.len(), 1100);
    assert_eq!(keys.files[1099].name, "k1099");
    // Two pages of at most 1000 keys.
    assert_eq!(store.stats().requests - after_connect, 3);
    assert!(!store.is_dir(&root.join("nothing")).unwrap());
    assert_eq!(store.list(&root.join("set/sub")).unwrap().dirs, ["deeper"]);
}

#[test]
fn ranged_reads_equal_the_uploaded_bytes() {
    let len = (5 * MIB + 12_345) as usize;
    let Some((s3, data)) = server_with_object("ranged_reads_equal_the_uploaded_bytes", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt", &options(MIB, 0));
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    assert_eq!(src.len(), len as u64);
    let m = MIB as usize;
    let mut cases = vec![
        (0, 1),
        (m - 1, 2),
        (m - 5, m + 10),
        (len - 7, 7),
        (3 * m, m),
        (10, 4 * m),
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % len as u64) as usize;
        let n = ((x >> 32) as usize % (2 * m)).min(len - at).max(1);
        cases.push((at, n));
    }
    for (at, n) in cases {
        let mut buf = vec![0u8; n];
        src.read_exact_at(at as u64, &mut buf, "test").unwrap();
        assert!(buf == data[at..at + n], "bytes {at}+{n} differ");
    }
    assert_eq!(store.stats().errors, 0);
    assert!(
        src.identity()
            .unwrap()
            .starts_with(&format!("s3:{}/bkt/dir/data.bin:{len}:", s3.endpoint()))
    );
}

#[test]
fn sequential_reads_prefetch_and_fetch_little_more_than_they_read() {
    let len = (24 * MIB + 100) as usize;
    let Some((s3, data)) = server_with_object("sequential_reads_prefetch", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt/dir", &options(MIB, 4));
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    let mut at = 0usize;
    let mut buf = vec![0u8; 128 << 10];
    // Two blocks read in order: blocks ahead come in the background, at most four in flight.
    while at < 2 * MIB as usize {
        src.read_exact_at(at as u64, &mut buf, "test").unwrap();
        at += buf.len();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.stats().bytes < 5 * MIB && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let ahead = store.stats().bytes;
    assert!((5 * MIB..=6 * MIB).contains(&ahead), "{}", store.stats());
    while at < len {
        let n = buf.len().min(len - at);
        src.read_exact_at(at as u64, &mut buf[..n], "test").unwrap();
        assert!(buf[..n] == data[at..at + n], "bytes at {at} differ");
        at += n;
    }
    let c = store.stats();
    assert!(c.bytes <= len as u64 * 11 / 10, "{c}");
    assert!(c.bytes >= len as u64, "{c}");
    assert_eq!(c.errors, 0, "{c}");
}

#[test]
fn headers_read_far_apart_fetch_pieces_not_blocks() {
    let len = (8 * MIB) as usize;
    let Some((s3, data)) = server_with_object("headers_read_far_apart_fetch_pieces", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt", &options(4 * MIB, 8));
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    let before = store.stats();
    // As a format indexing a stream reads it: a trailer and two headers per frame, far apart.
    for frame in 0..10u64 {
        let mut at = 1000 + frame * 700 * 1024;
        for n in [2, 40, 40] {
            let mut buf = vec![0u8; n];
            src.read_exact_at(at, &mut buf, "test").unwrap();
            assert!(buf == data[at as usize..at as usize + n], "bytes at {at}");
            at += n as u64;
        }
    }
    let c = store.stats();
    assert!(c.requests - before.requests <= 10, "{c}");
    assert!(c.bytes <= 10 * 256 * 1024, "{c}");
    // Reading on from a header turns into blocks, fetched ahead.
    let mut buf = vec![0u8; 128 << 10];
    for i in 0..4u64 {
        src.read_exact_at(i * (128 << 10), &mut buf, "test")
            .unwrap();
    }
    assert!(
        store.stats().bytes >= c.bytes + 4 * MIB,
        "{}",
        store.stats()
    );
}

#[test]
fn concurrent_readers_of_one_block_fetch_it_once() {
    let len = (2 * MIB) as usize;
    let Some((s3, data)) = server_with_object("concurrent_readers_fetch_once", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt", &options(2 * MIB, 0));
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    let before = store.stats().requests;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (src, data) = (Arc::clone(&src), &data);
            s.spawn(move || {
                let at = t * 100_000;
                let mut buf = vec![0u8; 100_000];
                src.read_exact_at(at, &mut buf, "test").unwrap();
                assert!(buf == data[at as usize..at as usize + 100_000]);
            });
        }
    });
    assert_eq!(store.stats().requests - before, 1, "{}", store.stats());
}

#[test]
fn an_object_replaced_after_listing_gives_errors_not_mixed_bytes() {
    let len = (3 * MIB) as usize;
    let Some((s3, data)) = server_with_object("an_object_replaced_after_listing", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt", &options(MIB, 0));
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    src.read_exact_at(0, &mut buf, "test").unwrap();
    assert!(buf == data[..1000]);
    s3.put("bkt", "dir/data.bin", &vec![0xAB; len]);
    // The cached piece still answers; an uncached one is refused, naming key and range.
    src.read_exact_at(0, &mut buf, "test").unwrap();
    assert!(buf == data[..1000]);
    let e = src
        .read_exact_at(2 * MIB, &mut buf, "test")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s3://bkt/dir/data.bin bytes 2097152..2359296"),
        "{e}"
    );
    assert!(e.contains("changed since it was listed"), "{e}");
    assert_eq!(store.stats().errors, 1);
}

#[test]
fn an_object_listed_without_its_etag_is_read_as_the_version_its_head_names() {
    let len = (3 * MIB) as usize;
    let Some((s3, data)) = server_with_object("an_object_listed_without_its_etag", len) else {
        return;
    };
    let etag = s3.list("bkt", "dir/")[0].etag.trim_matches('"').to_owned();
    let proxy = s3proxy::S3Proxy::start(s3.addr(), s3proxy::Faults::none(), 5);
    proxy.strip_listed_etags();
    let store = S3Store::connect_with_env(
        Path::new("s3://bkt"),
        &options(MIB, 0),
        Cache::new(64 * MIB),
        &env_at(&s3, &proxy.endpoint()),
    )
    .unwrap();
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    let identity = src.identity().unwrap();
    assert!(identity.contains(&etag), "{identity} names no ETag {etag}");
    let mut buf = vec![0u8; 1000];
    src.read_exact_at(0, &mut buf, "test").unwrap();
    assert!(buf == data[..1000]);
    // Replaced with as many bytes: an uncached read is refused, not served from the new one.
    s3.put("bkt", "dir/data.bin", &vec![0xAB; len]);
    let e = src
        .read_exact_at(2 * MIB, &mut buf, "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed since it was listed"), "{e}");
}

#[test]
fn a_missing_bucket_bad_endpoint_or_missing_credentials_fail_at_once() {
    let Some(s3) = S3Server::start("missing_bucket_or_credentials") else {
        return;
    };
    let cache = || Cache::new(1 << 20);
    let opts = S3Options::default();
    let e = S3Store::connect_with_env(Path::new("s3://nobucket/x"), &opts, cache(), &env_of(&s3))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("SOURCE s3://nobucket/x at http://127.0.0.1:"),
        "{e}"
    );
    assert!(
        e.contains("NoSuchBucket") || e.contains("does not exist"),
        "{e}"
    );
    let full = env_of(&s3);
    let no_keys = |k: &str| {
        (!k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
            .then(|| full(k))
            .flatten()
    };
    let e = S3Store::connect_with_env(Path::new("s3://bkt"), &opts, cache(), &no_keys)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no S3 credentials"), "{e}");
    // Unsigned requests need no credentials: moto lets anyone list, but a private object is
    // refused to them (a signed store reads it), with the key in the message.
    s3.create_bucket("public");
    s3.put("public", "x/f", b"private data");
    let unsigned = S3Options {
        no_sign: true,
        ..S3Options::default()
    };
    let store = S3Store::connect_with_env(Path::new("s3://public"), &unsigned, cache(), &no_keys);
    let store = store.unwrap();
    assert_eq!(
        store.list(Path::new("s3://public/x")).unwrap().files[0].size,
        12
    );
    let e = restorefs::storage::read_small(&store, Path::new("s3://public/x/f"), 100);
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("s3://public/x/f bytes 0..12") && e.contains("403"),
        "{e}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = S3Options {
        endpoint: Some(format!("http://{closed}")),
        ..S3Options::default()
    };
    let started = std::time::Instant::now();
    let e = S3Store::connect_with_env(Path::new("s3://bkt"), &nowhere, cache(), &env_of(&s3))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with(&format!("SOURCE s3://bkt at http://{closed}")),
        "{e}"
    );
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn the_disk_cache_serves_a_second_store_without_gets() {
    let len = (3 * MIB + 5) as usize;
    let Some((s3, data)) = server_with_object("the_disk_cache_serves_a_second_store", len) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = S3Options {
        disk_cache: Some(dir.path().join("blocks")),
        ..options(MIB, 2)
    };
    let read_all = |store: &S3Store| {
        let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
        // A header read (a piece), then the whole object (blocks).
        let mut buf = vec![0u8; 40];
        src.read_exact_at(2 * MIB + 1000, &mut buf, "test").unwrap();
        assert!(buf == data[2 * MIB as usize + 1000..][..40]);
        let mut buf = vec![0u8; len];
        src.read_exact_at(0, &mut buf, "test").unwrap();
        assert!(buf == data);
    };
    let first = connect(&s3, "s3://bkt", &opts);
    read_all(&first);
    assert_eq!(first.stats().bytes, len as u64 + (256 << 10));
    let second = connect(&s3, "s3://bkt", &opts);
    let listed = second.stats().requests;
    read_all(&second);
    let c = second.stats();
    assert_eq!(
        (c.requests - listed, c.bytes, c.disk_hits),
        (1, 0, 5),
        "{c}"
    );
}

#[test]
fn a_local_copy_is_fetched_once_and_equals_the_object() {
    let len = (2 * MIB + 77) as usize;
    let Some((s3, data)) = server_with_object("a_local_copy_is_fetched_once", len) else {
        return;
    };
    let store = connect(&s3, "s3://bkt", &options(MIB, 0));
    let scratch = tempfile::tempdir().unwrap();
    let path = Path::new("s3://bkt/dir/data.bin");
    let copy = store.local_copy(path, scratch.path()).unwrap();
    assert!(copy.starts_with(scratch.path()));
    assert!(std::fs::read(&copy).unwrap() == data);
    let before = store.stats();
    assert_eq!(store.local_copy(path, scratch.path()).unwrap(), copy);
    assert_eq!(store.stats(), before);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 1);
}

#[test]
fn a_flaky_server_gives_right_bytes_or_errors_never_wrong_bytes() {
    let len = (6 * MIB + 999) as usize;
    let Some((s3, data)) = server_with_object("a_flaky_server_gives_right_bytes", len) else {
        return;
    };
    let proxy = s3proxy::S3Proxy::start(s3.addr(), s3proxy::Faults::none(), 7);
    let store = S3Store::connect_with_env(
        Path::new("s3://bkt"),
        &options(MIB, 2),
        Cache::new(2 * MIB),
        &env_at(&s3, &proxy.endpoint()),
    )
    .unwrap();
    let src = store.open(Path::new("s3://bkt/dir/data.bin")).unwrap();
    proxy.set_faults(s3proxy::Faults::each(0.06));
    let (mut ok, mut failed) = (0, 0);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..80 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half the reads sequential, half random; the small cache makes blocks come again.
        let at = if i % 2 == 0 {
            (i / 2) * (len / 40)
        } else {
            (x % len as u64) as usize
        };
        let n = ((x >> 40) as usize % (300 << 10) + 1).min(len - at);
        let mut buf = vec![0u8; n];
        match src.read_exact_at(at as u64, &mut buf, "test") {
            Ok(()) => {
                assert!(buf == data[at..at + n], "wrong bytes at {at}+{n}");
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("s3://bkt/dir/data.bin"), "{e}");
                failed += 1;
            }
        }
    }
    let (p, c) = (proxy.counts(), store.stats());
    eprintln!("{ok} reads right, {failed} failed; store: {c}; proxy: {p:?}");
    assert!(
        p.truncated + p.internal_errors + p.slow_downs + p.dropped > 0,
        "{p:?}"
    );
    assert!(c.retries > 0, "{c}");
    assert!(ok >= 70, "{ok} reads right, {failed} failed: {c}; {p:?}");
}
