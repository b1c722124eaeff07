//! The container log in the CRI format the kubelet API serves for `kubectl logs`:
//! `<RFC3339Nano UTC> stdout|stderr F|P <line>\n`, one entry per line of output; a line longer
//! than [`MAX_LINE`] is split into `P` (partial) entries ended by an `F` one, as containerd.
//! Rotation by size: `<log>` → `<log>.1` → … → `<log>.<max_files - 1>`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::files::rfc3339_nano;

/// containerd's maximum log entry size (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: File,
    size: u64,
}

impl LogFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<LogFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            max_bytes,
            max_files,
            file,
            size,
        })
    }

    fn entry(&mut self, stream: &str, partial: bool, line: &[u8]) -> io::Result<()> {
        let mut entry = Vec::with_capacity(line.len() + 48);
        entry.extend_from_slice(rfc3339_nano(SystemTime::now()).as_bytes());
        entry.push(b' ');
        entry.extend_from_slice(stream.as_bytes());
        entry.extend_from_slice(if partial { b" P " } else { b" F " });
        entry.extend_from_slice(line);
        entry.push(b'\n');
        if self.max_bytes > 0 && self.size > 0 && self.size + entry.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&entry)?;
        self.size += entry.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let keep = self.max_files.saturating_sub(1);
        if keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(rotated(keep));
            for n in (1..keep).rev() {
                let _ = std::fs::rename(rotated(n), rotated(n + 1));
            }
            std::fs::rename(&self.path, rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// One output stream's not yet complete line.
pub struct Stream {
    pub name: &'static str,
    pending: Vec<u8>,
}

impl Stream {
    pub fn new(name: &'static str) -> Stream {
        Stream {
            name,
            pending: Vec::new(),
        }
    }

    /// Logs every complete line of `data` (and full-size partial chunks); keeps the rest.
    pub fn push(&mut self, log: &mut LogFile, data: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|b| *b == b'\n') {
                Some(pos) if pos <= MAX_LINE => {
                    log.entry(self.name, false, &rest[..pos])?;
                    start += pos + 1;
                }
                _ if rest.len() >= MAX_LINE => {
                    log.entry(self.name, true, &rest[..MAX_LINE])?;
                    start += MAX_LINE;
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// At end of stream: the last line without a newline is still a full entry.
    pub fn finish(&mut self, log: &mut LogFile) -> io::Result<()> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            log.entry(self.name, false, &line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path, 0, 5).unwrap();
        let mut out = Stream::new("stdout");
        out.push(&mut log, b"hel").unwrap();
        out.push(&mut log, b"lo\n\nworld").unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut err = Stream::new("stderr");
        err.push(&mut log, &long).unwrap();
        err.push(&mut log, b"\n").unwrap();
        out.finish(&mut log).unwrap();
        let e = entries(&path);
        assert_eq!(e[0], ("stdout".into(), "F".into(), "hello".into()));
        assert_eq!(e[1], ("stdout".into(), "F".into(), "".into()));
        assert_eq!(e[2].1, "P");
        assert_eq!(e[2].2.len(), MAX_LINE);
        assert_eq!(e[3], ("stderr".into(), "F".into(), "x".repeat(10)));
        assert_eq!(e[4], ("stdout".into(), "F".into(), "world".into()));
    }

    #[test]
    fn rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path, 200, 3).unwrap();
        let mut out = Stream::new("stdout");
        for i in 0..40 {
            out.push(&mut log, format!("line {i:03}\n").as_bytes())
                .unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(dir.path().join("0.log.1").exists());
        assert!(dir.path().join("0.log.2").exists());
        assert!(!dir.path().join("0.log.3").exists());
        let last = entries(&path);
        assert_eq!(last.last().unwrap().2, "line 039");
    }
}
