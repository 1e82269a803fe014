//! A Freezer `data` file as a readable stream: OpenSSL `enc` AES-256-CFB decryption when the
//! backup is encrypted (salted, SHA-256 key derivation, MD5 for OpenSSL 1.0 backups and for
//! freezer's own rsync-engine encryption), then decompression as the backup's metadata says:
//! gzip, bzip2 or xz for the tar engine (spec §7.1), Python's zlib, bz2 or lzma for the rsync
//! engine (§7.2).

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use aes::Aes256;
use aes::cipher::KeyIvInit;
use cfb_mode::BufDecryptor;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{RangeReader, Source};

/// The first bytes each compressor writes.
fn magic(compression: &str) -> Option<&'static [u8]> {
    match compression {
        // gzip's magic and its only method (deflate); bzip2's with its Huffman-coded version.
        "gzip" => Some(&[0x1f, 0x8b, 0x08]),
        "bzip2" => Some(b"BZh"),
        "xz" => Some(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
        _ => None,
    }
}

/// Which engine wrote a stream: it decides what "gzip" means and how the password is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The tar engine: the `gzip`, `bzip2` or `xz` programs, encrypted by `openssl enc`.
    Tar,
    /// The rsyncv2 engine: Python's `zlib` (a zlib stream, not gzip), `bz2` or `lzma`,
    /// encrypted by freezer's own OpenSSL-compatible code.
    Rsync,
}

impl Engine {
    /// The engine whose folder under `metadata/` and `data/` is `name` (`tar` for any other).
    pub fn of_dir(name: &str) -> Engine {
        if name == "rsync" {
            Engine::Rsync
        } else {
            Engine::Tar
        }
    }
}

/// Whether `head` starts the way `compression` starts for `engine`.
fn starts_right(engine: Engine, compression: &str, head: &[u8]) -> bool {
    match (engine, compression) {
        (Engine::Rsync, "gzip") => zlib_start(head),
        _ => magic(compression).is_some_and(|m| head.starts_with(m)),
    }
}

/// A zlib header (deflate, at most a 32 KiB window, no preset dictionary, RFC 1950's check
/// bits) whose first bytes inflate without error to a MessagePack list, if to anything: two
/// header bytes alone would let a wrong key through once in a few thousand tries.
fn zlib_start(head: &[u8]) -> bool {
    let [cmf, flg, ..] = *head else {
        return false;
    };
    let header = cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
    if !header {
        return false;
    }
    let mut out = [0u8; 16];
    let mut z = flate2::Decompress::new(true);
    match z.decompress(head, &mut out, flate2::FlushDecompress::None) {
        Err(_) => false,
        Ok(_) => z.total_out() == 0 || matches!(out[0], 0x90..=0x9f | 0xdc | 0xdd),
    }
}

/// The decompressed (and decrypted) stream of `source`, read front to back; the xz decoder may
/// take at most `memory` bytes (an xz header can ask for a dictionary of gigabytes).
pub fn open(
    source: &Arc<Source>,
    engine: Engine,
    compression: &str,
    password: Option<&[u8]>,
    memory: u64,
) -> Result<Box<dyn Read + Send>> {
    let path = source.path();
    if magic(compression).is_none() {
        return Err(Error::unsupported(
            path,
            format!("compression {compression:?} (restorefs reads gzip, bzip2 and xz)"),
        ));
    }
    let file = source.reader(0, source.len())?;
    let plain: Box<dyn Read + Send> = match password {
        None => Box::new(file),
        Some(pass) => {
            // Freezer's rsync engine reads the password with Python's `readline()`, which
            // keeps the line's newline.
            let mut with_newline = pass.to_vec();
            with_newline.push(b'\n');
            let passwords: Vec<&[u8]> = match engine {
                Engine::Tar => vec![pass],
                Engine::Rsync => vec![pass, &with_newline],
            };
            let check = |head: &[u8]| starts_right(engine, compression, head);
            Box::new(decrypt(file, path, &passwords, &check)?)
        }
    };
    let buffered = io::BufReader::with_capacity(1 << 16, plain);
    Ok(match (engine, compression) {
        (Engine::Rsync, "gzip") => Box::new(flate2::read::ZlibDecoder::new(buffered)),
        (_, "gzip") => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        (_, "bzip2") => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
        _ => Box::new(lzma_rust2::XzReader::new_mem_limit(
            buffered,
            true,
            u32::try_from(memory / 1024).unwrap_or(u32::MAX - 1),
        )),
    })
}

/// Bytes of ciphertext decrypted with each candidate key to recognise the right one.
const PROBE: u64 = 4096;

/// `EVP_BytesToKey(digest, password, salt, count = 1)`: 32 key bytes and 16 IV bytes.
fn bytes_to_key<D: Digest>(password: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut out = Vec::with_capacity(64);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < 48 {
        let mut h = D::new();
        h.update(&prev);
        h.update(password);
        h.update(salt);
        prev = h.finalize().to_vec();
        out.extend_from_slice(&prev);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..48]);
    (key, iv)
}

/// A reader decrypting AES-256-CFB128 as it goes.
struct CfbReader<R> {
    inner: R,
    dec: BufDecryptor<Aes256>,
}

impl<R: Read> Read for CfbReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let Some(got) = buf.get_mut(..n) else {
            return Err(io::Error::other("a reader returned more bytes than asked"));
        };
        self.dec.decrypt(got);
        Ok(n)
    }
}

/// The OpenSSL `enc` stream in `file`: `Salted__`, 8 bytes of salt, then ciphertext. The
/// password and key derivation that make the plaintext start as `check` wants win.
fn decrypt(
    mut file: RangeReader,
    path: &Path,
    passwords: &[&[u8]],
    check: &dyn Fn(&[u8]) -> bool,
) -> Result<CfbReader<io::Chain<io::Cursor<Vec<u8>>, RangeReader>>> {
    let mut head = [0u8; 16];
    file.read_exact(&mut head)
        .map_err(|_| Error::corrupt(path, 0, "encrypted backup shorter than its OpenSSL header"))?;
    if &head[..8] != b"Salted__" {
        return Err(Error::corrupt(
            path,
            0,
            "encrypted backup without OpenSSL's 'Salted__' header",
        ));
    }
    let salt = head[8..16].to_vec();
    // Enough plaintext to tell a right key from a wrong one by its first bytes.
    let mut first = Vec::new();
    (&mut file)
        .take(PROBE)
        .read_to_end(&mut first)
        .map_err(|e| Error::io(path, &e))?;
    let derivations = [bytes_to_key::<Sha256>, bytes_to_key::<Md5>];
    for (password, derive) in passwords
        .iter()
        .flat_map(|p| derivations.iter().map(move |d| (p, d)))
    {
        let (key, iv) = derive(password, &salt);
        let cipher = || {
            BufDecryptor::<Aes256>::new_from_slices(&key, &iv)
                .map_err(|e| Error::corrupt(path, 8, format!("cannot set up AES: {e}")))
        };
        let mut probe = first.clone();
        cipher()?.decrypt(&mut probe);
        if check(&probe) {
            let dec = cipher()?;
            return Ok(CfbReader {
                inner: io::Cursor::new(first).chain(file),
                dec,
            });
        }
    }
    Err(Error::corrupt(
        path,
        16,
        "cannot decrypt: the key does not fit this backup (neither SHA-256 nor MD5 derivation gives the compressor's header)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // `openssl enc -aes-256-cfb -md sha256 -S 0102030405060708 -pass pass:secret -P`
        let (key, iv) = bytes_to_key::<Sha256>(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        let out = std::process::Command::new("openssl")
            .args([
                "enc",
                "-aes-256-cfb",
                "-md",
                "sha256",
                "-S",
                "0102030405060708",
                "-pass",
                "pass:secret",
                "-P",
            ])
            .output()
            .expect("openssl is installed (CI installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("key={}", hex(&key))), "{text}");
        assert!(text.contains(&format!("iv ={}", hex(&iv))), "{text}");
    }
}
