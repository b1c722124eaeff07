//! The control protocol on `<container dir>/shim.sock` (unix stream socket, mode 0600).
//!
//! One request per connection: the client writes one JSON line, the shim answers with one
//! JSON line and closes the connection.
//!
//! ```text
//! → {"op":"status"}             ← {"ok":true,"pid":123,"exit":null}   (exit: the exit.json object once ended)
//! → {"op":"kill","signal":15}   ← {"ok":true}  or  {"ok":false,"error":"..."}
//! → {"op":"wait"}               ← (held until the container ended and exit.json is written)
//!                                 {"ok":true,"pid":123,"exit":{...}}
//! → {"op":"resize","cols":80,"rows":24}   ← {"ok":true}   (tty containers)
//! → {"op":"attach"}             ← {"ok":true,"tty":false,"stdin":true}, then frames both ways
//! ```
//!
//! After `attach` the connection carries frames: 1 byte stream id ([`STDIN`], [`STDOUT`],
//! [`STDERR`]), a u32 big-endian payload length, the payload. The shim sends the
//! container's output from the moment of attaching (a tty container's on [`STDOUT`]); the
//! client sends [`STDIN`] frames (only if `"stdin":true`), an empty one meaning end of
//! input. Closing the connection detaches. With `stdinOnce`, the container's stdin is
//! closed when the first attached client ends its input or detaches (as upstream).
//! Unknown ops answer `{"ok":false,"error":"..."}`, so old shims fail clearly.

use serde::{Deserialize, Serialize};

use super::files::Exit;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Status,
    Kill { signal: i32 },
    Wait,
    Resize { cols: u16, rows: u16 },
    Attach,
}

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Bytes before a frame's payload.
pub const HEADER: usize = 5;

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, stream: u8, payload: &[u8]) {
    out.push(stream);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }
}
