//! The files a shim leaves in its container directory, read by the agent (and by a
//! restarted agent): `shim.pid`, `state.json` (running), `exit.json` (ended). Written
//! atomically (temp file + rename) so a reader never sees half a file.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ExitReason;

pub const CONFIG: &str = "config.json";
pub const STATE: &str = "state.json";
pub const EXIT: &str = "exit.json";
pub const PID: &str = "shim.pid";
pub const SOCKET: &str = "shim.sock";
/// The shim's own diagnostics (its stderr): libcontainer's warnings and errors.
pub const SHIM_LOG: &str = "shim.log";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub pid: i32,
    /// RFC 3339
    pub started_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: ExitReason,
    pub started_at: String,
    pub finished_at: String,
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// `Ok(None)` when the file does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// RFC 3339 UTC with nanoseconds, trailing zeros trimmed (Go's RFC3339Nano, which the CRI
/// log format and Kubernetes timestamps use).
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let datetime = time::OffsetDateTime::UNIX_EPOCH + since;
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        datetime.year(),
        u8::from(datetime.month()),
        datetime.day(),
        datetime.hour(),
        datetime.minute(),
        datetime.second()
    );
    let nanos = datetime.nanosecond();
    if nanos != 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Parses what [`rfc3339_nano`] writes (and any RFC 3339 time).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let datetime =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = datetime.unix_timestamp_nanos();
    let nanos = u64::try_from(nanos).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_trims_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_200);
        assert_eq!(rfc3339_nano(t), "2016-10-06T00:17:09.6697942Z");
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 0);
        assert_eq!(rfc3339_nano(t), "2016-10-06T00:17:09Z");
        assert_eq!(
            parse_rfc3339("2016-10-06T00:17:09.6697942Z"),
            Some(UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_200))
        );
    }
}
