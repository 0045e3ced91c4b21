//! A guest's stdout and stderr, line by line into its tenant's log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::NodeEnv;
use crate::logs::LogLevel;

/// The stream given to WASI as stdout or stderr.
pub(crate) struct GuestOutput {
    env: Arc<NodeEnv>,
    stream: &'static str,
}

impl GuestOutput {
    pub(crate) fn new(env: Arc<NodeEnv>, stream: &'static str) -> Self {
        Self { env, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            env: self.env.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

/// Buffers one line (at most the tenant's log-line limit) and logs it at each newline.
struct LineWriter {
    env: Arc<NodeEnv>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let level = if self.stream == "stderr" {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.env
            .log(level, self.stream, text.trim_end_matches(['\r', '\n']));
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let max = self.env.log_line_bytes();
        for &byte in buf {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < max {
                self.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
