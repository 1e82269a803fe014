//! The listening socket (a unix socket or TCP) and its connections: one thread per connection
//! (and a few workers inside it), a bounded number at once, all ended by [`Server::stop`].

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::exports::Exports;
use super::{DEFAULT_PORT, handshake, transmission};
use crate::error::{Error, Result};

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 128;

/// Where to listen: `unix:PATH`, or `HOST[:PORT]` (port 10809 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp(String, u16),
}

impl Address {
    /// Parses `unix:PATH`, `HOST:PORT`, `HOST`, `:PORT` (loopback) or `[V6]:PORT`.
    pub fn parse(s: &str) -> Result<Address> {
        let bad = |why: &str| Error::usage(format!("--nbd {s}: {why}"));
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("give the socket's path: unix:PATH"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                let port = p.parse().map_err(|_| bad("the port is not a number"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (
                s.trim_start_matches('[').trim_end_matches(']'),
                DEFAULT_PORT,
            ),
        };
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        Ok(Address::Tcp(host.to_owned(), port))
    }

    /// A URI a client can open `export` with (`nbd+unix:///vm1/latest/vda.raw?socket=...`).
    pub fn uri(&self, export: &str) -> String {
        match self {
            Address::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            Address::Tcp(h, port) if h.contains(':') => format!("nbd://[{h}]:{port}/{export}"),
            Address::Tcp(h, port) => format!("nbd://{h}:{port}/{export}"),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Address::Tcp(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// One client connection, whatever the socket.
pub trait Stream: Read + Write + Send + Sync {
    /// A second handle on the same connection (one reads while the other writes).
    fn try_clone_box(&self) -> io::Result<Box<dyn Stream>>;
    /// Ends the connection both ways (best effort: it may be gone already).
    fn shutdown(&self);
    /// Bounds how long a read or a write may wait.
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn try_clone_box(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

impl Stream for TcpStream {
    fn try_clone_box(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, std::net::Shutdown::Both);
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// Serves one connection from handshake to disconnect. Errors are the client's (a broken
/// socket, a protocol violation); the connection is over either way.
pub fn serve_connection(mut stream: Box<dyn Stream>, exports: &Exports) -> io::Result<()> {
    // A client that stalls in the handshake is dropped; one that idles later is not (a VM's disk).
    let mut timed = Deadline {
        stream: &mut stream,
        until: Instant::now() + handshake::DEADLINE,
    };
    let Some(agreed) = handshake::negotiate(&mut timed, exports)? else {
        return Ok(());
    };
    stream.set_timeout(None)?;
    log::info!("nbd: serving {}", agreed.name);
    let mut reader = stream.try_clone_box()?;
    let killer = stream.try_clone_box()?;
    let result = transmission::serve(&agreed, &mut reader, &mut stream, &|| killer.shutdown());
    log::info!("nbd: {} closed", agreed.name);
    result
}

/// A connection whose reads and writes fail once `until` has passed (however slowly the bytes
/// trickle, or however long the client leaves its replies unread).
struct Deadline<'a> {
    stream: &'a mut Box<dyn Stream>,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl Deadline<'_> {
    fn arm(&mut self) -> io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_timeout(Some(left))
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A bound socket, not serving yet.
pub struct Listener {
    socket: Socket,
    address: Address,
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `address` (a stale unix socket left by a dead server is replaced).
    pub fn bind(address: &Address) -> Result<Listener> {
        let socket = match address {
            Address::Unix(path) => Socket::Unix(bind_unix(path)?),
            Address::Tcp(host, port) => {
                let named = format!("--nbd {address}");
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| Error::usage(format!("{named}: {e}")))?
                    .collect();
                let l = TcpListener::bind(&addrs[..])
                    .map_err(|e| Error::io(Path::new(&named), &e).context("listening"))?;
                Socket::Tcp(l)
            }
        };
        // The port the system chose, when asked for port 0.
        let address = match (&socket, address) {
            (Socket::Tcp(l), Address::Tcp(h, _)) => {
                Address::Tcp(h.clone(), l.local_addr().map_or(0, |a| a.port()))
            }
            _ => address.clone(),
        };
        Ok(Listener { socket, address })
    }

    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Serves `exports` on a thread of its own until [`Server::stop`].
    pub fn start(self, exports: Exports) -> Result<Server> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            exports,
        });
        let s = Arc::clone(&shared);
        let Listener { socket, address } = self;
        let thread = std::thread::Builder::new()
            .name("nbd-listen".into())
            .spawn(move || accept_loop(&socket, &s))
            .map_err(|e| Error::io(Path::new("nbd"), &e).context("starting"))?;
        Ok(Server {
            shared,
            address,
            thread: Some(thread),
        })
    }
}

/// Binds a unix socket at `path`, replacing a socket nobody listens on.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    let named = |e: &io::Error| Error::io(path, e).context("--nbd");
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(Error::usage(format!(
                "--nbd unix:{}: exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::usage(format!(
                "--nbd unix:{}: another server listens there",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| named(&e))?;
    }
    UnixListener::bind(path).map_err(|e| named(&e))
}

/// What the listener and the connections share.
struct Shared {
    stop: AtomicBool,
    /// Open connections, to end them on stop.
    conns: Mutex<HashMap<u64, Box<dyn Stream>>>,
    next: AtomicU64,
    exports: Exports,
}

fn accept_loop(socket: &Socket, shared: &Arc<Shared>) {
    loop {
        let accepted: io::Result<Box<dyn Stream>> = match socket {
            Socket::Unix(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Socket::Tcp(l) => l.accept().map(|(s, _)| {
                // Replies are written whole; small ones should not wait for more.
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Stream>
            }),
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok(stream) => admit(stream, shared),
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to end.
                log::warn!("nbd: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves `stream` on a thread of its own, unless too many are open.
fn admit(stream: Box<dyn Stream>, shared: &Arc<Shared>) {
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = shared.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() >= MAX_CONNECTIONS {
            log::warn!("nbd: {MAX_CONNECTIONS} connections open; refusing another");
            return;
        }
        match stream.try_clone_box() {
            Ok(handle) => conns.insert(id, handle),
            Err(e) => {
                log::warn!("nbd: {e}");
                return;
            }
        };
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            if let Err(e) = serve_connection(stream, &s.exports) {
                log::info!("nbd: connection dropped: {e}");
            }
            s.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
    if let Err(e) = spawned {
        log::warn!("nbd: cannot start a connection thread: {e}");
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    address: Address,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Stops listening, ends every connection and removes the unix socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // The listener waits in accept(): a connection of our own wakes it.
        match &self.address {
            Address::Unix(p) => drop(UnixStream::connect(p)),
            Address::Tcp(h, port) => drop(TcpStream::connect((h.as_str(), *port))),
        }
        if thread.join().is_err() {
            log::error!("nbd: the listener thread panicked");
        }
        for conn in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            conn.shutdown();
        }
        if let Address::Unix(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_does_not_read_cannot_stall_the_handshake_past_its_deadline() {
        let (ours, _client) = UnixStream::pair().unwrap();
        // Replies the client never reads fill the socket: the write must give up, not block.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stream: Box<dyn Stream> = Box::new(ours);
            let mut timed = Deadline {
                stream: &mut stream,
                until: Instant::now() + Duration::from_millis(300),
            };
            let r = (0..10_000).try_for_each(|_| timed.write_all(&[0u8; 4096]));
            let _ = done_tx.send(r.is_err());
        });
        let failed = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(failed, Ok(true), "the write blocked past the deadline");
    }

    #[test]
    fn addresses_parse_with_loopback_and_the_nbd_port_by_default() {
        let tcp = |h: &str, p| Address::Tcp(h.to_owned(), p);
        let cases = [
            (
                "unix:/run/r.sock",
                Address::Unix(PathBuf::from("/run/r.sock")),
            ),
            ("10.0.0.5:7000", tcp("10.0.0.5", 7000)),
            ("backup-host", tcp("backup-host", DEFAULT_PORT)),
            (":7000", tcp("127.0.0.1", 7000)),
            ("[::1]:7000", tcp("::1", 7000)),
            ("[::1]", tcp("::1", DEFAULT_PORT)),
            ("::1", tcp("::1", DEFAULT_PORT)),
        ];
        for (text, want) in cases {
            assert_eq!(Address::parse(text).unwrap(), want, "{text}");
        }
        for bad in ["unix:", "host:port", "host:99999"] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with(&format!("--nbd {bad}: ")), "{e}");
        }
        assert_eq!(tcp("::1", 7).to_string(), "[::1]:7");
        assert_eq!(
            Address::Unix("/s".into()).uri("vm/latest/vda.raw"),
            "nbd+unix:///vm/latest/vda.raw?socket=/s"
        );
        assert_eq!(tcp("h", 1).uri("x"), "nbd://h:1/x");
    }
}
