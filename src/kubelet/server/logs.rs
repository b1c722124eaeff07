//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's CRI-format log file
//! (`<RFC3339Nano> stdout|stderr F|P <text>`, written by the shim) turned back into the raw
//! bytes the container wrote, as upstream's kubelet does for `kubectl logs`.
//!
//! Like upstream, only the current file is read (rotated ones are not), partial lines (`P`)
//! are joined, `timestamps` prefixes each line, `tailLines` counts lines, and `follow` keeps
//! reading — across a rotation of the file — until the container has exited and the file
//! is drained.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::containers::ContainerRecord;

/// How often a followed log is checked for new lines once it is drained.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Bytes read from the file at a time.
const CHUNK: usize = 64 << 10;

/// What `kubectl logs` asked for (upstream's PodLogOptions, as query parameters).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Reads the query parameters; an error names the bad one.
    pub fn from_query(query: &HashMap<String, String>) -> Result<LogOptions, String> {
        let flag = |name: &str| {
            query
                .get(name)
                .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
        };
        let number = |name: &str| -> Result<Option<i64>, String> {
            query
                .get(name)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{name}: {v:?} is not an integer"))
                })
                .transpose()
        };
        let tail_lines = match number("tailLines")? {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as usize),
            None => None,
        };
        let limit_bytes = match number("limitBytes")? {
            Some(n) if n < 1 => return Err("limitBytes: must be greater than 0".into()),
            other => other.map(|n| n as u64),
        };
        let since = match (number("sinceSeconds")?, query.get("sinceTime")) {
            (Some(_), Some(_)) => {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into())
            }
            (Some(seconds), None) if seconds < 1 => {
                return Err("sinceSeconds: must be greater than 0".into())
            }
            (Some(seconds), None) => Some(
                Timestamp::now()
                    .checked_sub(SignedDuration::from_secs(seconds))
                    .map_err(|e| format!("sinceSeconds: {e}"))?,
            ),
            (None, Some(time)) => Some(
                time.parse::<Timestamp>()
                    .map_err(|e| format!("sinceTime: {time:?}: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok(LogOptions {
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            tail_lines,
            since,
            limit_bytes,
        })
    }
}

/// One line of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    /// `P`: the container's line continues in the next record.
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses `<timestamp> <stream> <tags> <content>` (without the trailing newline). Lines
/// that do not have that shape are skipped, as upstream does.
pub fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(fields.next()?).ok()?;
    let stream = std::str::from_utf8(fields.next()?).ok()?;
    let tags = fields.next()?;
    let content = fields.next().unwrap_or_default();
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // Tags are ':'-separated; the first says full or partial.
    let partial = tags.split(|b| *b == b':').next() == Some(b"P");
    Some(CriLine {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// Turns CRI lines into output bytes, remembering whether the next line starts a new
/// container line (timestamps go only before those).
#[derive(Debug)]
struct Formatter {
    timestamps: bool,
    since: Option<Timestamp>,
    at_line_start: bool,
}

impl Formatter {
    fn new(options: &LogOptions) -> Formatter {
        Formatter {
            timestamps: options.timestamps,
            since: options.since,
            at_line_start: true,
        }
    }

    /// Appends the output of one raw file line to `out`.
    fn push(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let Some(line) = parse_line(raw) else {
            return;
        };
        if let Some(since) = self.since {
            match line.timestamp.parse::<Timestamp>() {
                Ok(at) if at < since => return,
                Err(_) => return,
                Ok(_) => {}
            }
        }
        if self.timestamps && self.at_line_start {
            out.extend_from_slice(line.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line.content);
        if !line.partial {
            out.push(b'\n');
        }
        self.at_line_start = !line.partial;
    }
}

/// Where in `data` (a whole file) the last `n` container lines start: counts full (`F`)
/// records from the end, so a line split into partial records counts once.
fn tail_start(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let mut starts = Vec::new();
    let mut offset = 0;
    for raw in data.split_inclusive(|b| *b == b'\n') {
        if !raw.ends_with(b"\n") {
            break;
        }
        starts.push((offset, parse_line(&raw[..raw.len() - 1]).map(|l| l.partial)));
        offset += raw.len();
    }
    let mut full_lines = 0;
    let mut start = data.len();
    let mut index = starts.len();
    while index > 0 {
        index -= 1;
        let (offset, partial) = starts[index];
        if partial == Some(false) {
            full_lines += 1;
            if full_lines > n {
                break;
            }
        }
        start = offset;
    }
    start
}

/// Why the log cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { container: String, pod: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens the log of `record` per `options` and streams it: the receiver yields chunks
/// until the log ends (or, following, the container exited and the file is drained). A
/// dropped receiver stops the reader.
pub async fn stream(
    record: ContainerRecord,
    options: LogOptions,
) -> Result<mpsc::Receiver<io::Result<Bytes>>, LogError> {
    let path = if options.previous {
        record
            .previous_log_path
            .clone()
            .filter(|p| p.exists())
            .ok_or_else(|| LogError::NoPrevious {
                container: record.container.clone(),
                pod: record.pod.clone(),
            })?
    } else {
        record.log_path.clone()
    };
    let read_error = |source| LogError::Read {
        path: path.display().to_string(),
        source,
    };
    let data = match tokio::fs::read(&path).await {
        Ok(data) => data,
        // Created but not yet written: an empty log, which `follow` waits on.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !options.previous => Vec::new(),
        Err(e) => return Err(read_error(e)),
    };
    let (tx, rx) = mpsc::channel(16);
    let follow = options.follow && !options.previous;
    tokio::spawn(async move {
        let mut reader = Reader {
            formatter: Formatter::new(&options),
            remaining: options.limit_bytes,
            tx,
            pending: Vec::new(),
        };
        let start = options
            .tail_lines
            .map(|n| tail_start(&data, n))
            .unwrap_or(0);
        if !reader.feed(&data[start..]).await {
            return;
        }
        if follow {
            if let Err(e) = reader.follow(&record, path, data.len() as u64).await {
                let _ = reader.tx.send(Err(e)).await;
            }
        }
    });
    Ok(rx)
}

struct Reader {
    formatter: Formatter,
    /// limitBytes left, if set.
    remaining: Option<u64>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    /// The start of a line whose newline has not been read yet.
    pending: Vec<u8>,
}

impl Reader {
    /// Formats the complete lines of `data` (keeping a trailing partial one) and sends
    /// them; false when the reader should stop (limit reached or receiver gone).
    async fn feed(&mut self, data: &[u8]) -> bool {
        let mut out = Vec::new();
        self.pending.extend_from_slice(data);
        let mut consumed = 0;
        while let Some(end) = self.pending[consumed..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[consumed..consumed + end];
            self.formatter.push(line, &mut out);
            consumed += end + 1;
        }
        self.pending.drain(..consumed);
        if out.is_empty() {
            return true;
        }
        let mut stop = false;
        if let Some(remaining) = &mut self.remaining {
            if out.len() as u64 >= *remaining {
                out.truncate(*remaining as usize);
                stop = true;
            }
            *remaining -= out.len() as u64;
        }
        self.tx.send(Ok(Bytes::from(out))).await.is_ok() && !stop
    }

    /// Reads what is appended to `path` from `offset` on, reopening it when the shim
    /// rotates it, until the container has exited and the file is drained.
    async fn follow(
        &mut self,
        record: &ContainerRecord,
        path: PathBuf,
        mut offset: u64,
    ) -> io::Result<()> {
        let mut file = open_at(&path, offset).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match &mut file {
                Some(file) => file.read(&mut buf).await?,
                None => 0,
            };
            if n > 0 {
                offset += n as u64;
                if !self.feed(&buf[..n]).await {
                    return Ok(());
                }
                continue;
            }
            if self.tx.is_closed() {
                return Ok(());
            }
            // Drained. A new file at the path (rotation) is read from its start.
            if rotated(&path, file.as_ref(), offset).await {
                file = open_at(&path, 0).await?;
                offset = 0;
                self.pending.clear();
                continue;
            }
            if !record.running() {
                // One more read: lines written between the last read and the exit.
                if let Some(file) = &mut file {
                    let mut rest = Vec::new();
                    file.read_to_end(&mut rest).await?;
                    self.feed(&rest).await;
                }
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

async fn open_at(path: &PathBuf, offset: u64) -> io::Result<Option<tokio::fs::File>> {
    match tokio::fs::File::open(path).await {
        Ok(mut file) => {
            file.seek(io::SeekFrom::Start(offset)).await?;
            Ok(Some(file))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the file now at `path` is not the one open (renamed away by rotation, or
/// truncated below what was read).
async fn rotated(path: &PathBuf, open: Option<&tokio::fs::File>, offset: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(current) = tokio::fs::metadata(path).await else {
        return false;
    };
    let Some(open) = open else {
        return true;
    };
    match open.metadata().await {
        Ok(meta) => meta.ino() != current.ino() || current.len() < offset,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-29T09:00:00.000000001Z stdout F first line
2026-11-29T09:00:01.5Z stderr F an error
2026-11-29T09:00:02Z stdout P joined 
2026-11-29T09:00:03Z stdout F line
garbage
2026-11-29T09:00:04Z stdout F last
";

    fn render(data: &str, options: &LogOptions) -> String {
        let mut formatter = Formatter::new(options);
        let start = options
            .tail_lines
            .map(|n| tail_start(data.as_bytes(), n))
            .unwrap_or(0);
        let mut out = Vec::new();
        for line in data[start..].lines() {
            formatter.push(line.as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_are_parsed_by_the_cri_format() {
        assert_eq!(
            parse_line(b"2026-11-29T09:00:00Z stdout F hello world"),
            Some(CriLine {
                timestamp: "2026-11-29T09:00:00Z",
                stream: "stdout",
                partial: false,
                content: b"hello world"
            })
        );
        let empty = parse_line(b"2026-11-29T09:00:00Z stderr P").unwrap();
        assert!(empty.partial && empty.content.is_empty());
        assert_eq!(parse_line(b"2026 stdin F x"), None);
    }

    #[test]
    fn output_joins_partial_lines_and_honours_timestamps_tail_and_since() {
        let all = LogOptions::default();
        assert_eq!(
            render(LOG, &all),
            "first line\nan error\njoined line\nlast\n"
        );
        let stamped = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render(LOG, &stamped),
            "2026-11-29T09:00:00.000000001Z first line\n\
             2026-11-29T09:00:01.5Z an error\n\
             2026-11-29T09:00:02Z joined line\n\
             2026-11-29T09:00:04Z last\n"
        );
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(render(LOG, &tail(2)), "joined line\nlast\n");
        assert_eq!(render(LOG, &tail(1)), "last\n");
        assert_eq!(render(LOG, &tail(0)), "");
        assert_eq!(render(LOG, &tail(10)), render(LOG, &all));
        let since = LogOptions {
            since: Some("2026-11-29T09:00:01Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(render(LOG, &since), "an error\njoined line\nlast\n");
    }

    #[test]
    fn query_parameters_are_read_and_checked() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let options = LogOptions::from_query(&query(&[
            ("follow", "true"),
            ("tailLines", "5"),
            ("timestamps", "1"),
            ("limitBytes", "100"),
        ]))
        .unwrap();
        assert!(options.follow && options.timestamps && !options.previous);
        assert_eq!(options.tail_lines, Some(5));
        assert_eq!(options.limit_bytes, Some(100));
        let since = LogOptions::from_query(&query(&[("sinceSeconds", "60")]))
            .unwrap()
            .since
            .unwrap();
        assert!(Timestamp::now().duration_since(since).as_secs() >= 59);
        assert!(LogOptions::from_query(&query(&[("tailLines", "x")])).is_err());
        assert!(LogOptions::from_query(&query(&[
            ("sinceSeconds", "1"),
            ("sinceTime", "2026-01-01T00:00:00Z")
        ]))
        .is_err());
    }

    async fn collect(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    fn record(dir: &std::path::Path) -> ContainerRecord {
        let container_dir = dir.join("containers/c1");
        std::fs::create_dir_all(&container_dir).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        ContainerRecord {
            id: "c1".into(),
            dir: container_dir,
            pod_uid: "u".into(),
            namespace: "ns".into(),
            pod: "web".into(),
            container: "app".into(),
            log_path: dir.join("logs/1.log"),
            previous_log_path: Some(dir.join("logs/0.log")),
        }
    }

    #[tokio::test]
    async fn follow_reads_across_a_rotation_until_the_container_exits() {
        let dir = tempfile::tempdir().unwrap();
        let record = record(dir.path());
        std::fs::write(dir.path().join("logs/0.log"), LOG).unwrap();
        std::fs::write(&record.log_path, "2026-11-29T09:00:00Z stdout F one\n").unwrap();
        let options = LogOptions {
            follow: true,
            limit_bytes: None,
            ..Default::default()
        };
        let rx = stream(record.clone(), options).await.unwrap();
        let output = tokio::spawn(collect(rx));
        let append = |text: &str| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&record.log_path)
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
        };
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A record written in two pieces, and a partial record joined with the next.
        append("2026-11-29T09:00:01Z stdout P tw");
        tokio::time::sleep(Duration::from_millis(250)).await;
        append("o\n2026-11-29T09:00:01Z stdout F o\n");
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The shim rotates: the file is renamed and a new one started.
        std::fs::rename(&record.log_path, dir.path().join("logs/1.log.1")).unwrap();
        append("2026-11-29T09:00:02Z stderr F three\n");
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::fs::write(record.dir.join("exit.json"), "{}").unwrap();
        let output = tokio::time::timeout(Duration::from_secs(5), output)
            .await
            .expect("follow ends once the container exited")
            .unwrap();
        assert_eq!(output, "one\ntwoo\nthree\n");

        let previous = LogOptions {
            previous: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(
            collect(stream(record.clone(), previous).await.unwrap()).await,
            "last\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(3),
            ..Default::default()
        };
        std::fs::write(&record.log_path, LOG).unwrap();
        assert_eq!(collect(stream(record, limited).await.unwrap()).await, "fir");
    }
}
