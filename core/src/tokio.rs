//! Async receive and send on tokio (the `tokio` feature): [`AsyncConsumer`] and
//! [`AsyncProducer`] wrap a handle and register its pollable descriptor
//! ([`Consumer::fd`], [`Producer::fd`]) with tokio's reactor through
//! [`AsyncFd`]. No thread is started per channel: a task waiting
//! for frames sleeps in the reactor's `epoll` with the program's sockets and timers, and while
//! frames flow a receive is the synchronous `try_recv`, with no system call.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), shmring::Error> {
//! use shmring::tokio::{AsyncConsumer, AsyncProducer};
//! use shmring::{ChannelConfig, Segment};
//!
//! let seg = Segment::anonymous(&ChannelConfig::spsc())?;
//! let mut tx = AsyncProducer::new(seg.producer()?)?;
//! let mut rx = AsyncConsumer::new(seg.consumer()?)?;
//! let reader = tokio::spawn(async move {
//!     let mut buf = [0u8; 64];
//!     let n = rx.recv(&mut buf).await?.len;
//!     Ok::<_, shmring::Error>(buf[..n].to_vec())
//! });
//! tx.send(b"tick").await?;
//! assert_eq!(reader.await.unwrap()?, b"tick");
//! # Ok(())
//! # }
//! ```
//!
//! Each method is cancel-safe: a future dropped before it completes has taken nothing (a
//! receive) or sent nothing (a send). Within `tokio::select!` a frame is therefore never lost.

use crate::consumer::{Frame, OwnedFrame, Received};
use crate::error::{Error, Result};
use crate::producer::Claim;
use crate::{Consumer, Producer};
use ::tokio::io::Interest;
use ::tokio::io::unix::AsyncFd;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A duplicate of a handle's descriptor, owned here: what tokio registers stays open, and
/// refers to the handle's io_uring or eventfd, for as long as the registration.
#[derive(Debug)]
struct Descriptor(OwnedFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers a duplicate of `fd` (a handle's descriptor) with the current runtime.
fn register(fd: RawFd) -> Result<AsyncFd<Descriptor>> {
    if ::tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InvalidArgument(
            "an async shmring handle is made inside a tokio runtime (with IO enabled)".into(),
        ));
    }
    // SAFETY: `fd` is the handle's open descriptor (`Consumer::fd`), valid for this call; the
    // duplicate is ours.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| Error::os("duplicating the pollable descriptor", e))?;
    // SAFETY: the `AsyncFd` owns the duplicate, which stays open and the same for the
    // registration's life.
    unsafe { AsyncFd::register_with_interest(Descriptor(dup), Interest::READABLE) }.map_err(|e| {
        Error::os(
            "registering the pollable descriptor with tokio",
            e.into_parts().1,
        )
    })
}

/// Waits until `fd` is readable and clears the readiness (the caller's next non-waiting call
/// re-arms the descriptor if it finds nothing).
async fn readable(fd: &AsyncFd<Descriptor>) -> Result<()> {
    let mut guard = fd
        .readable()
        .await
        .map_err(|e| Error::os("waiting on the pollable descriptor", e))?;
    guard.clear_ready();
    Ok(())
}

/// A [`Consumer`] whose receives are `async`.
#[derive(Debug)]
pub struct AsyncConsumer {
    fd: AsyncFd<Descriptor>,
    consumer: Consumer,
}

impl AsyncConsumer {
    /// Wraps `consumer`, registering its descriptor with the current tokio runtime (which
    /// must have IO enabled: tokio panics otherwise, as for any `AsyncFd`).
    pub fn new(mut consumer: Consumer) -> Result<AsyncConsumer> {
        let fd = register(consumer.fd()?)?;
        Ok(AsyncConsumer { fd, consumer })
    }

    /// Copies the next frame into `buf` and releases it, waiting while the ring is empty;
    /// `Closed` once the stream is finished (or the channel deleted) and everything received.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<Received> {
        loop {
            match self.consumer.try_recv(buf) {
                Err(Error::WouldBlock(_)) => readable(&self.fd).await?,
                other => return other,
            }
        }
    }

    /// Lends the next frame in place, waiting while the ring is empty; the frame is released
    /// when the returned [`Frame`] is dropped.
    pub async fn read(&mut self) -> Result<Frame<'_>> {
        loop {
            match self.consumer.try_take() {
                Err(Error::WouldBlock(_)) => readable(&self.fd).await?,
                Err(e) => return Err(e),
                Ok(token) => return Ok(self.consumer.lend(token)),
            }
        }
    }

    /// The next frame, copied out; `None` at the end of the stream (as the blocking iterator,
    /// [`Consumer::iter`], ends at `Closed`).
    pub async fn next(&mut self) -> Option<Result<OwnedFrame>> {
        match self.read().await {
            Ok(frame) => Some(Ok(frame.to_owned_frame())),
            Err(Error::Closed(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The wrapped consumer, for what reads without receiving (statistics, `missed`); for
    /// anything else, [`into_inner`](AsyncConsumer::into_inner). (No `&mut`: replacing the
    /// consumer would leave this wrapper waiting on the old one's descriptor.)
    pub fn get_ref(&self) -> &Consumer {
        &self.consumer
    }

    /// Unwraps the consumer (its descriptor leaves the reactor).
    pub fn into_inner(self) -> Consumer {
        drop(self.fd);
        self.consumer
    }
}

/// A [`Producer`] whose sends are `async`.
#[derive(Debug)]
pub struct AsyncProducer {
    fd: AsyncFd<Descriptor>,
    producer: Producer,
}

impl AsyncProducer {
    /// Wraps `producer`, registering its descriptor with the current tokio runtime (which
    /// must have IO enabled).
    pub fn new(mut producer: Producer) -> Result<AsyncProducer> {
        let fd = register(producer.fd()?)?;
        Ok(AsyncProducer { fd, producer })
    }

    /// Sends a copy of `frame`, waiting while the ring is full. A message longer than a frame
    /// is sent whole once all of it fits ([`Producer::try_send`]); one too long for the ring
    /// to hold at once is refused (`InvalidArgument`): it can only stream through the ring,
    /// which a blocking [`Producer::send`] does (on a thread of its own, e.g.
    /// `tokio::task::spawn_blocking`).
    pub async fn send(&mut self, frame: &[u8]) -> Result<()> {
        loop {
            match self.producer.try_send(frame) {
                Err(Error::WouldBlock(_)) => readable(&self.fd).await?,
                other => return other,
            }
        }
    }

    /// Reserves `len` bytes in the ring, waiting while it is full; write the frame into the
    /// [`Claim`] and commit it.
    pub async fn claim(&mut self, len: usize) -> Result<Claim<'_>> {
        loop {
            match self.producer.try_reserve(len) {
                Err(Error::WouldBlock(_)) => readable(&self.fd).await?,
                Err(e) => return Err(e),
                Ok(token) => return Ok(self.producer.claim_of(token)),
            }
        }
    }

    /// Ends the stream ([`Producer::finish`]).
    pub fn finish(self) -> Result<()> {
        self.into_inner().finish()
    }

    /// The wrapped producer (see [`AsyncConsumer::get_ref`]).
    pub fn get_ref(&self) -> &Producer {
        &self.producer
    }

    /// Unwraps the producer (its descriptor leaves the reactor).
    pub fn into_inner(self) -> Producer {
        drop(self.fd);
        self.producer
    }
}
