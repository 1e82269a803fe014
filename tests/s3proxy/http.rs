//! Just enough HTTP/1.1 for the fault-injecting proxy: a message head (start line and headers),
//! a body by Content-Length, chunked coding or until close, all bounded; never panics on garbage.

use std::io::{self, BufRead, Read, Write};

const MAX_LINE: u64 = 16 * 1024;
const MAX_HEADERS: usize = 200;
/// The largest body the proxy buffers (test objects and ranged reads are far smaller).
pub const MAX_BODY: u64 = 1 << 30;

/// A start line and headers, in their order.
#[derive(Debug, Clone)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` holds `token` among its comma-separated values.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Drops every header named in `names` (case-insensitive).
    pub fn remove(&mut self, names: &[&str]) {
        self.headers
            .retain(|(k, _)| !names.iter().any(|n| k.eq_ignore_ascii_case(n)));
    }

    /// Writes the head, then `body`.
    pub fn write(&self, w: &mut impl Write, body: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        w.write_all(&out)?;
        w.flush()
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One CRLF- (or LF-) terminated line, without its terminator; `None` at a clean end of stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(bad("line too long or cut"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| bad("line not UTF-8"))
}

/// A message head; `None` when the stream ends before it starts.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let Some(start) = read_line(r)? else {
        return Ok(None);
    };
    if start.split(' ').filter(|p| !p.is_empty()).count() < 2 {
        return Err(bad("bad start line"));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("head cut"))?;
        if line.is_empty() {
            return Ok(Some(Head { start, headers }));
        }
        if headers.len() == MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

/// How a body is delimited.
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing of a message with `head`, by its Transfer-Encoding or Content-Length;
/// `otherwise` when it has neither.
pub fn framing(head: &Head, otherwise: Framing) -> io::Result<Framing> {
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match head.get("content-length") {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= MAX_BODY)
            .map(Framing::Length)
            .ok_or_else(|| bad("bad Content-Length")),
        None => Ok(otherwise),
    }
}

/// Reads a body framed as `framing` (chunked bodies are decoded, trailers dropped).
pub fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            r.take(n).read_to_end(&mut body)?;
            if body.len() as u64 != n {
                return Err(bad("body cut"));
            }
        }
        Framing::UntilClose => {
            r.take(MAX_BODY).read_to_end(&mut body)?;
        }
        Framing::Chunked => read_chunks(r, &mut body)?,
    }
    Ok(body)
}

fn read_chunks(r: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("chunk cut"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if body.len() as u64 + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        if size == 0 {
            while !read_line(r)?.ok_or_else(|| bad("trailer cut"))?.is_empty() {}
            return Ok(());
        }
        let start = body.len();
        r.take(size).read_to_end(body)?;
        if (body.len() - start) as u64 != size || !read_line(r)?.is_some_and(|l| l.is_empty()) {
            return Err(bad("chunk cut"));
        }
    }
}
