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
//! ```
//!
//! Extension (next stage): `{"op":"attach",...}` answers `{"ok":true}` and then switches
//! the same connection to a framed byte stream (stdin in, stdout/stderr out); unknown ops
//! answer `{"ok":false,"error":"unknown op ..."}`, so old shims fail clearly.

use serde::{Deserialize, Serialize};

use super::files::Exit;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Status,
    Kill { signal: i32 },
    Wait,
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
