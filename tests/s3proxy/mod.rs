//! Test helper: a fault-injecting HTTP/1.1 proxy between an S3 client and the test S3 server.
//! For a seeded fraction of requests it drops the connection before answering, delays the
//! answer, answers 500 InternalError or 503 SlowDown (S3 XML error bodies), or sends the full
//! Content-Length and closes mid-body; everything else is forwarded unchanged (the Host header
//! too: SigV4 signs it, and moto serves path-style requests whatever the Host says). Client
//! connections are kept alive whatever the server does. Counters say what was injected.
#![allow(dead_code)]

pub mod http;

use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http::{Framing, Head};

const CLIENT_IDLE: Duration = Duration::from_secs(60);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fraction of requests that get each fault (their sum at most 1; the rest are forwarded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    pub drop: f64,
    pub delay: f64,
    pub internal_error: f64,
    pub slow_down: f64,
    pub truncate: f64,
    /// The range a delayed request waits, uniformly, before it is forwarded.
    pub delay_range: (Duration, Duration),
}

impl Faults {
    /// No faults: a plain proxy.
    pub fn none() -> Faults {
        Faults::each(0.0)
    }

    /// `fraction` of the requests for each kind of fault, delays of 200 ms to 2 s.
    pub fn each(fraction: f64) -> Faults {
        Faults {
            drop: fraction,
            delay: fraction,
            internal_error: fraction,
            slow_down: fraction,
            truncate: fraction,
            delay_range: (Duration::from_millis(200), Duration::from_secs(2)),
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Requests read in full from clients.
    pub requests: u64,
    /// Answers forwarded whole from the server (delayed ones included).
    pub forwarded: u64,
    pub dropped: u64,
    pub delayed: u64,
    pub internal_errors: u64,
    pub slow_downs: u64,
    pub truncated: u64,
    /// Requests answered 502 because the server could not be reached (not injected).
    pub upstream_failures: u64,
    /// Bytes of response bodies sent to clients (truncated ones included).
    pub body_bytes: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
    internal_errors: AtomicU64,
    slow_downs: AtomicU64,
    truncated: AtomicU64,
    upstream_failures: AtomicU64,
    body_bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Drop,
    Delay(Duration),
    InternalError,
    SlowDown,
    Truncate,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    seed: u64,
    draws: AtomicU64,
    counters: Counters,
    stop: AtomicBool,
    clients: Mutex<Vec<TcpStream>>,
    /// Listings answered without their `<ETag>` elements (as s3s-fs lists).
    strip_listed_etags: AtomicBool,
}

/// A running proxy on 127.0.0.1; stops (and cuts its connections) on drop.
pub struct S3Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl S3Proxy {
    /// Starts a proxy to `upstream` that injects `faults`, drawn from a generator seeded `seed`.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> S3Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(faults),
            seed,
            draws: AtomicU64::new(0),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
            strip_listed_etags: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, s));
        S3Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes the faults injected from the next request on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// From now on, answers listings without their objects' ETags, as some servers do.
    pub fn strip_listed_etags(&self) {
        self.shared.strip_listed_etags.store(true, Ordering::SeqCst);
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            dropped: get(&c.dropped),
            delayed: get(&c.delayed),
            internal_errors: get(&c.internal_errors),
            slow_downs: get(&c.slow_downs),
            truncated: get(&c.truncated),
            upstream_failures: get(&c.upstream_failures),
            body_bytes: get(&c.body_bytes),
        }
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.shared.clients.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if let Ok(c) = conn.try_clone() {
            shared.clients.lock().unwrap().push(c);
        }
        let s = shared.clone();
        std::thread::spawn(move || serve(conn, &s));
    }
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Shared {
    /// A uniform value in [0, 1) from the seeded sequence.
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::SeqCst);
        (mix(self.seed ^ mix(n)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&self) -> Fault {
        let f = *self.faults.lock().unwrap();
        let r = self.draw();
        let kinds = [
            (f.drop, Fault::Drop),
            (f.internal_error, Fault::InternalError),
            (f.slow_down, Fault::SlowDown),
            (f.truncate, Fault::Truncate),
        ];
        let mut edge = f.delay;
        if r < edge {
            let (lo, hi) = f.delay_range;
            return Fault::Delay(lo + hi.saturating_sub(lo).mul_f64(self.draw()));
        }
        for (p, kind) in kinds {
            edge += p;
            if r < edge {
                return kind;
            }
        }
        Fault::None
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// One client connection: requests in turn until it closes, idles out or a fault ends it.
fn serve(client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(CLIENT_IDLE));
    let _ = client.set_write_timeout(Some(CLIENT_IDLE));
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = client;
    while !shared.stop.load(Ordering::SeqCst) {
        let Some((head, body)) = read_request(&mut reader, &mut writer) else {
            break;
        };
        shared.count(&shared.counters.requests);
        if !answer(&head, &body, &mut writer, shared) {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// A whole request (head and decoded body), answering `Expect: 100-continue` itself; `None` at
/// the end of the connection or on garbage (answered 400).
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Option<(Head, Vec<u8>)> {
    let mut head = match http::read_head(reader) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(_) => {
            let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return None;
        }
    };
    if head.has_token("expect", "100-continue") {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }
    let body = http::read_body(reader, http::framing(&head, Framing::None).ok()?).ok()?;
    let chunked = head.has_token("transfer-encoding", "chunked");
    head.remove(&["expect", "connection", "keep-alive", "transfer-encoding"]);
    if chunked {
        head.remove(&["content-length"]);
        head.headers
            .push(("Content-Length".into(), body.len().to_string()));
    }
    Some((head, body))
}

/// Answers one request as the fault drawn for it says; whether the connection goes on.
fn answer(head: &Head, body: &[u8], writer: &mut TcpStream, shared: &Shared) -> bool {
    let is_head = head.start.starts_with("HEAD ");
    let c = &shared.counters;
    let fault = shared.pick();
    match fault {
        Fault::Drop => {
            shared.count(&c.dropped);
            return false;
        }
        Fault::InternalError => {
            shared.count(&c.internal_errors);
            // Not S3's "internal error" wording: daemon logs are checked for that phrase.
            let msg = "Injected InternalError: please try again.";
            return send_error(writer, 500, "InternalError", msg, is_head);
        }
        Fault::SlowDown => {
            shared.count(&c.slow_downs);
            let msg = "Please reduce your request rate.";
            return send_error(writer, 503, "SlowDown", msg, is_head);
        }
        Fault::Delay(d) => {
            shared.count(&c.delayed);
            std::thread::sleep(d);
        }
        Fault::Truncate | Fault::None => {}
    }
    let Some((mut resp, mut resp_body)) = forward(shared.upstream, head, body, is_head) else {
        shared.count(&c.upstream_failures);
        let msg = "The proxy could not reach the server.";
        return send_error(writer, 502, "BadGateway", msg, is_head);
    };
    if shared.strip_listed_etags.load(Ordering::SeqCst) && head.start.contains("list-type=2") {
        resp_body = without_etags(&resp_body);
        resp.remove(&["content-length"]);
        resp.headers
            .push(("Content-Length".into(), resp_body.len().to_string()));
    }
    let sent = match fault {
        Fault::Truncate if resp_body.is_empty() => {
            shared.count(&c.dropped);
            return false;
        }
        Fault::Truncate => {
            shared.count(&c.truncated);
            &resp_body[..resp_body.len() / 2]
        }
        _ => {
            shared.count(&c.forwarded);
            &resp_body[..]
        }
    };
    c.body_bytes.fetch_add(sent.len() as u64, Ordering::SeqCst);
    resp.write(writer, sent).is_ok() && fault != Fault::Truncate
}

/// An XML listing without its `<ETag>…</ETag>` elements.
fn without_etags(body: &[u8]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    while let Some(start) = text.find("<ETag>") {
        let Some(len) = text[start..].find("</ETag>") else {
            break;
        };
        text.replace_range(start..start + len + "</ETag>".len(), "");
    }
    text.into_bytes()
}

/// Whether a response to this request has no body (HEAD, 1xx, 204, 304).
fn no_body(resp: &Head, is_head: bool) -> bool {
    let code = resp.start.split(' ').nth(1).unwrap_or("");
    is_head || code.starts_with('1') || code == "204" || code == "304"
}

/// Sends the request on a fresh server connection (moto closes after each answer anyway) and
/// reads the whole answer, made ready for a kept-alive HTTP/1.1 client: its body framed by an
/// exact Content-Length.
fn forward(
    upstream: SocketAddr,
    head: &Head,
    body: &[u8],
    is_head: bool,
) -> Option<(Head, Vec<u8>)> {
    let mut conn = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT).ok()?;
    conn.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    let mut req = head.clone();
    req.headers.push(("Connection".into(), "close".into()));
    req.write(&mut conn, body).ok()?;
    let mut reader = BufReader::new(conn);
    let mut resp = http::read_head(&mut reader).ok()??;
    while resp
        .start
        .split(' ')
        .nth(1)
        .is_some_and(|c| c.starts_with('1'))
    {
        resp = http::read_head(&mut reader).ok()??;
    }
    let framing = if no_body(&resp, is_head) {
        Framing::None
    } else {
        http::framing(&resp, Framing::UntilClose).ok()?
    };
    let resp_body = http::read_body(&mut reader, framing).ok()?;
    resp.start = resp.start.replacen("HTTP/1.0", "HTTP/1.1", 1);
    resp.remove(&["connection", "keep-alive", "transfer-encoding"]);
    if !no_body(&resp, is_head) {
        resp.remove(&["content-length"]);
        resp.headers
            .push(("Content-Length".into(), resp_body.len().to_string()));
    }
    Some((resp, resp_body))
}

/// Answers an S3 XML error; whether the connection goes on.
fn send_error(
    writer: &mut TcpStream,
    status: u16,
    code: &str,
    message: &str,
    is_head: bool,
) -> bool {
    let reason = match status {
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>restorefs-test-proxy</RequestId></Error>"
    );
    let head = Head {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![
            ("Content-Type".into(), "application/xml".into()),
            ("Content-Length".into(), body.len().to_string()),
        ],
    };
    let body = if is_head { &[][..] } else { body.as_bytes() };
    head.write(writer, body).is_ok()
}
