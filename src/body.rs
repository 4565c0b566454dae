//! The one response body type: a whole buffer, or a stream of bytes (a reader following a run's
//! log) sent as they come. A stream that breaks off (a relayed answer whose source went away)
//! ends the response without its last chunk, so the client sees a broken answer, never one that
//! merely ended early.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio_stream::{Stream, StreamExt};

pub enum Body {
    /// A complete body (taken when sent).
    Full(Option<Bytes>),
    /// Pieces as they are produced; an error breaks the response off. Dropping the body drops
    /// the stream, which is how an attached run learns that its client has gone.
    Stream(Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => f.debug_tuple("Full").field(&b.as_ref().map(Bytes::len)).finish(),
            Body::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn stream(pieces: impl Stream<Item = Bytes> + Send + 'static) -> Body {
        Body::Stream(Box::pin(pieces.map(Ok)))
    }

    /// Pieces that may break off: the first error ends the response without its last chunk.
    pub fn fallible(pieces: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
        Body::Stream(Box::pin(pieces))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => s.as_mut().poll_next(cx).map(|b| b.map(|b| b.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
