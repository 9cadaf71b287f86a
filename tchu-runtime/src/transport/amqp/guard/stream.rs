//! [`FrameGuard`]: a byte stream under lapin that finds the frame boundaries in what the
//! broker sends, hands every frame on untouched except the few that carry a publisher's
//! texts, and has those checked ([`Inspector`]) before lapin's parser sees them.

use super::inspect::{
    FRAME_HEADER, FRAME_METHOD, FRAME_PREFIX, Inspector, carries_publisher_texts,
};
use futures_lite::io::{AsyncRead, AsyncWrite};
use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// The largest frame held whole for a check. The broker never sends a frame over the
/// negotiated `frame_max` (128 KiB by default); a larger one is handed on as it comes.
const MAX_INSPECTED: usize = 16 << 20;
/// The read buffer's size; it grows to hold one whole frame to check when needed.
const BUFFER: usize = 64 << 10;

/// What the next frame in the buffer is.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Not known before this many bytes are buffered.
    Need(usize),
    /// A frame of this length that passes unchanged.
    Pass(usize),
    /// A frame of this length to check whole.
    Check(usize),
}

/// Classifies the frame at the start of `buf`.
fn classify(buf: &[u8]) -> Next {
    let Some(&kind) = buf.first() else {
        return Next::Need(1);
    };
    if kind == b'A' {
        // A protocol header: the broker refusing the client's protocol version.
        return Next::Pass(8);
    }
    if buf.len() < FRAME_PREFIX {
        return Next::Need(FRAME_PREFIX);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let len = size.saturating_add(FRAME_PREFIX + 1);
    if len > MAX_INSPECTED {
        return Next::Pass(len);
    }
    match kind {
        FRAME_HEADER => Next::Check(len),
        FRAME_METHOD if len >= FRAME_PREFIX + 5 => {
            let ids = FRAME_PREFIX + 4;
            if buf.len() < ids {
                return Next::Need(ids);
            }
            let class = u16::from_be_bytes([buf[7], buf[8]]);
            let method = u16::from_be_bytes([buf[9], buf[10]]);
            if carries_publisher_texts(class, method) {
                Next::Check(len)
            } else {
                Next::Pass(len)
            }
        }
        _ => Next::Pass(len),
    }
}

/// A stream whose reads hand lapin only frames its parser takes (see the module docs).
/// Writes go straight through.
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    /// Bytes read and not handed on yet: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// How many more bytes of the current frame pass unchanged, buffered or not yet read.
    passing: usize,
    /// A frame handed on in place of one the parser would refuse, and how much of it is out.
    replacement: Vec<u8>,
    replaced: usize,
    inspector: Inspector,
    /// The inner stream ended.
    eof: bool,
}

impl<S> FrameGuard<S> {
    /// Guards the reads of `inner`, a connection to the broker just opened (plaintext: over
    /// TLS, the stream above it).
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            passing: 0,
            replacement: Vec::new(),
            replaced: 0,
            inspector: Inspector::default(),
            eof: false,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Copies into `out` what is ready to hand on, deciding about buffered frames as they
    /// complete; returns how much was copied.
    fn hand_on(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            if self.replaced < self.replacement.len() {
                let k = (self.replacement.len() - self.replaced).min(out.len() - n);
                out[n..n + k].copy_from_slice(&self.replacement[self.replaced..self.replaced + k]);
                self.replaced += k;
                n += k;
            } else if self.passing > 0 {
                let k = self.passing.min(self.end - self.start).min(out.len() - n);
                if k == 0 {
                    break;
                }
                out[n..n + k].copy_from_slice(&self.buf[self.start..self.start + k]);
                self.start += k;
                self.passing -= k;
                n += k;
            } else if !self.decide() {
                break;
            }
        }
        n
    }

    /// Decides about the frame at the front of the buffer; `false` when it is not whole yet.
    fn decide(&mut self) -> bool {
        if self.eof {
            // What is left of a frame cut short by the end of the stream: lapin judges it.
            self.passing = self.end - self.start;
            return self.passing > 0;
        }
        match classify(self.buffered()) {
            Next::Pass(len) => {
                if self.buffered()[0] == FRAME_HEADER {
                    let channel =
                        u16::from_be_bytes([self.buf[self.start + 1], self.buf[self.start + 2]]);
                    self.inspector.forget(channel);
                }
                self.passing = len;
            }
            Next::Check(len) if self.end - self.start >= len => {
                let frame = &self.buf[self.start..self.start + len];
                match self.inspector.inspect(frame) {
                    None => self.passing = len,
                    Some(replacement) => {
                        self.replacement = replacement;
                        self.replaced = 0;
                        self.start += len;
                    }
                }
            }
            Next::Check(_) | Next::Need(_) => return false,
        }
        true
    }

    /// How many bytes the buffer must hold, from its start, to decide about the next frame.
    fn wanted(&self) -> usize {
        match classify(self.buffered()) {
            Next::Need(n) | Next::Check(n) => n,
            Next::Pass(_) => 1,
        }
    }
}

impl<S: AsyncRead + Unpin> FrameGuard<S> {
    /// Reads more from the inner stream into the buffer, making room for a whole frame.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wanted = self.wanted();
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.start < wanted || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut self.buf[self.end..]))?;
        self.end += n;
        self.eof = n == 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.hand_on(out);
            if n > 0 || out.is_empty() || (this.eof && this.start == this.end) {
                return Poll::Ready(Ok(n));
            }
            if this.passing > 0 && this.start == this.end {
                // The rest of a frame that passes unchanged: straight into the caller's buffer.
                let limit = this.passing.min(out.len());
                let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut out[..limit]))?;
                this.passing -= n;
                this.eof = n == 0;
                return Poll::Ready(Ok(n));
            }
            ready!(this.poll_fill(cx))?;
        }
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut n = 0;
        for buf in bufs.iter_mut() {
            let k = this.hand_on(buf);
            n += k;
            if k < buf.len() {
                break;
            }
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        match bufs.iter_mut().find(|b| !b.is_empty()) {
            Some(buf) => Pin::new(this).poll_read(cx, buf),
            None => Poll::Ready(Ok(0)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
