//! The `meta` frame's JSON: what a stream is (full, inc, diff), which checkpoint, which disk.

use chrono::NaiveDateTime;
use serde_json::Value;

use crate::timefmt;

/// The fields restorefs uses; missing optional keys are `None` (old writers omit some).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamMeta {
    /// Virtual disk size at backup time.
    pub virtual_size: u64,
    /// Sum of the uncompressed lengths of all data frames.
    pub data_size: u64,
    /// Local time the backup ran, as written.
    pub date: Option<NaiveDateTime>,
    /// libvirt target dev (`vda`).
    pub disk_name: Option<String>,
    /// `virtnbdbackup.N` (meaning depends on the level, see the spec §2.3).
    pub checkpoint: Option<String>,
    /// The checkpoint this stream's changes are relative to; `None` for full/copy.
    pub parent: Option<String>,
    /// True for inc/diff (and offline inc).
    pub incremental: bool,
    /// Data payloads are LZ4 frames.
    pub compressed: bool,
}

/// Parses the meta JSON; the error says which key is wrong.
// A bare message: every caller wraps it at once into an `Error` with the file and offset.
pub fn parse(json: &[u8]) -> Result<StreamMeta, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("bad meta JSON: {e}"))?;
    let obj = v.as_object().ok_or("bad meta JSON: not an object")?;
    let uint = |k: &str| -> Result<u64, String> {
        obj.get(k)
            .ok_or(format!("meta has no '{k}'"))?
            .as_u64()
            .ok_or(format!("meta '{k}' is not a non-negative integer"))
    };
    let text = |k: &str| -> Option<String> {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // `stream-version` (v0.19-0.21) is checked first, like the reference reader does.
    let version = obj
        .get("stream-version")
        .or_else(|| obj.get("streamVersion"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    // Anything but JSON `false` (an int level, or `true`) means compressed, from version 2 on.
    let compressed = version == 2
        && obj
            .get("compressed")
            .is_some_and(|c| c != &Value::Bool(false));
    let incremental = match obj.get("incremental") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("meta 'incremental' is not a boolean".into()),
    };
    let virtual_size = uint("virtualSize")?;
    if virtual_size > i64::MAX as u64 {
        return Err(format!(
            "meta 'virtualSize' {virtual_size} is beyond any disk"
        ));
    }
    Ok(StreamMeta {
        virtual_size,
        data_size: uint("dataSize")?,
        date: obj
            .get("date")
            .and_then(Value::as_str)
            .and_then(timefmt::parse_naive),
        disk_name: obj
            .get("diskName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        checkpoint: text("checkpointName"),
        parent: text("parentCheckpoint"),
        incremental,
        compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_meta() {
        let m = parse(
            br#"{"virtualSize": 2097152, "dataSize": 65536, "date": "2026-11-22T02:06:03.070859",
                "diskName": "vda", "diskFormat": "qcow2", "checkpointName": "virtnbdbackup.0",
                "compressed": 2, "compressionMethod": "lz4", "parentCheckpoint": "virtnbdbackup.0",
                "incremental": true, "streamVersion": 2}"#,
        )
        .unwrap();
        assert_eq!(m.virtual_size, 2097152);
        assert!(m.compressed && m.incremental);
        assert_eq!(m.parent.as_deref(), Some("virtnbdbackup.0"));
        assert_eq!(m.date.unwrap().to_string(), "2026-11-22 02:06:03.070859");
    }

    #[test]
    fn old_and_odd_variants() {
        // Stream version 1 never compressed, even if a key says so.
        let m = parse(br#"{"virtualSize": 1, "dataSize": 0, "stream-version": 1, "compressed": true, "parentCheckpoint": false}"#).unwrap();
        assert!(!m.compressed && !m.incremental);
        assert_eq!(m.parent, None);
        let m =
            parse(br#"{"virtualSize": 1, "dataSize": 0, "streamVersion": 2, "compressed": false}"#)
                .unwrap();
        assert!(!m.compressed);
        assert!(
            parse(br#"{"dataSize": 0}"#)
                .unwrap_err()
                .contains("virtualSize")
        );
        assert!(parse(b"{not json").unwrap_err().contains("bad meta JSON"));
    }
}
