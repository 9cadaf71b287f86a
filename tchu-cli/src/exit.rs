//! Failures and the exit codes they map to.

use serde_json::Value;

/// The operation failed: broker refusal, unroutable topic, missing queue, no responder.
pub const FAILED: u8 = 1;
/// Usage error: clap's own code, reused for invalid input found before connecting.
pub const USAGE: u8 = 2;
/// The broker could not be reached (or the connection was lost and not restored in time).
pub const CONNECT: u8 = 3;
/// `call` got no answer in time.
pub const TIMEOUT: u8 = 4;
/// The responder answered with an error: business error, failed handler, dispatcher failure.
pub const REMOTE: u8 = 5;

/// A command that did not succeed: what to tell the user and which exit code to return.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// A machine-readable kind, like `unroutable` or `timeout` (the `error` of the JSON form).
    pub kind: &'static str,
    /// The human explanation.
    pub message: String,
    /// Structured detail, like the business error a responder answered with.
    pub detail: Option<Value>,
}

impl Failure {
    /// A failure with a code, a kind and a message.
    pub fn new(code: u8, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            message: message.into(),
            detail: None,
        }
    }

    /// Invalid input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, "usage", message)
    }

    /// The operation failed (exit 1).
    pub fn failed(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(FAILED, kind, message)
    }

    /// The broker cannot be reached (exit 3).
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(CONNECT, "connect", message)
    }

    /// Attaches structured detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// stdout was closed by the reader (`| head -1`): stop quietly, successfully.
    pub fn stdout_closed() -> Self {
        Self::new(0, "stdout_closed", "stdout closed")
    }

    /// Maps a tchu library error: the exit code from its kind (as a `run!()` binary's commands
    /// give it), the message with its causes.
    pub fn from_tchu(e: &tchu::Error) -> Self {
        use tchu::Error as E;
        let msg = tchu::error_chain(e).to_string();
        let kind = match e {
            E::Connect { .. } | E::Disconnected { .. } => "connect",
            E::Unroutable { .. } => "unroutable",
            E::Nacked { .. } => "nacked",
            E::TooLarge { .. } => "too_large",
            _ if e.kind().exit_code() == USAGE => "usage",
            _ => "broker",
        };
        let msg = if kind == "unroutable" {
            format!("unroutable: {msg}")
        } else {
            msg
        };
        Self::new(e.kind().exit_code(), kind, msg)
    }
}
