//! An independent writer of Core Lightning backup-plugin files (spec §1): a 512-byte big-endian
//! header, then `u32 length, u32 version, u8 type` entries.

/// The data_version bump statement that ends a committed transaction with version `v`.
pub fn bump(v: u32) -> String {
    format!(
        "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
        v - 1
    )
}

/// A backup file being written.
pub struct LogWriter {
    bytes: Vec<u8>,
    count: u64,
    last_offset: u64,
}

impl Default for LogWriter {
    fn default() -> Self {
        LogWriter {
            bytes: vec![0; 512],
            count: 0,
            last_offset: 0,
        }
    }
}

impl LogWriter {
    fn entry(&mut self, version: u32, kind: u8, payload: &[u8]) {
        self.last_offset = self.bytes.len() as u64;
        self.bytes
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(&version.to_be_bytes());
        self.bytes.push(kind);
        self.bytes.extend_from_slice(payload);
        self.count += 1;
    }

    /// A snapshot entry: a whole database file.
    pub fn snapshot(&mut self, version: u32, db: &[u8]) {
        self.entry(version, 2, db);
    }

    /// A transaction entry: statements joined by NUL.
    pub fn tx(&mut self, version: u32, stmts: &[String]) {
        self.entry(version, 1, stmts.join("\0").as_bytes());
    }

    /// The file, its header naming `head` as the last written version.
    pub fn finish(mut self, head: u32) -> Vec<u8> {
        let next = self.bytes.len() as u64;
        let mut h = Vec::with_capacity(36);
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(&head.to_be_bytes());
        h.extend_from_slice(&next.to_be_bytes());
        h.extend_from_slice(&head.saturating_sub(1).to_be_bytes());
        h.extend_from_slice(&self.last_offset.to_be_bytes());
        h.extend_from_slice(&self.count.to_be_bytes());
        self.bytes[..36].copy_from_slice(&h);
        self.bytes
    }
}
