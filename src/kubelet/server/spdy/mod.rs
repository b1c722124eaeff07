//! SPDY/3.1 as Kubernetes uses it for exec, attach and port-forward: the server side of a
//! connection whose client (kubectl, through the API server) opens streams. Raw over an
//! upgraded HTTP/1.1 connection (`Upgrade: SPDY/3.1`) or tunnelled inside WebSocket binary
//! messages (`SPDY/3.1+portforward.k8s.io`, see [`websocket_io`]).
//!
//! Like Kubernetes' spdystream there is no flow control: WINDOW_UPDATE is read and ignored,
//! TCP does the pacing. Owns framing ([`frame`]) and the stream bookkeeping ([`session`]);
//! knows nothing of what the streams carry.

pub mod frame;
pub mod session;
pub mod websocket_io;

pub use frame::{header, Headers};
pub use session::{accept, SpdyStream, StreamWriter};

/// What went wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the SPDY connection is closed")]
    Closed,
}
