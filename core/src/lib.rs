//! # shmring
//!
//! Lock-free rings in shared memory for sending *frames* (byte messages) between processes on
//! one Linux host, with latency close to the cost of moving one cache line between two cores.
//!
//! A channel lives in one shared-memory [`Segment`] and is either
//!
//! * **SPSC** ([`Kind::Spsc`]): one producer, one consumer, variable-length frames packed in a
//!   byte ring; a small frame crosses between cores in a single cache-line transfer;
//! * **MPMC** ([`Kind::Mpmc`]): many producers and consumers over fixed-size slots, each frame
//!   delivered to exactly one consumer;
//! * **broadcast** ([`Kind::Broadcast`]): one producer, up to `max_consumers` subscribers over
//!   fixed-size slots, every frame delivered to every subscriber, with an [`Overflow`] policy
//!   for a full ring (wait for the slowest subscriber, or overwrite the oldest frame and count
//!   exactly what a lapped subscriber missed) and optional history for late joiners.
//!
//! All offer copying sends and receives, zero-copy claims and reads, batches, and non-blocking,
//! timed and blocking variants, with a per-handle [`WaitStrategy`] (spin, yield, or park on a
//! futex). The data path makes no system call while there is work to do.
//!
//! Shared memory is treated as untrusted input: every cursor, length and sequence read from it
//! is checked, and a damaged segment yields [`Error::Corrupted`], never undefined behaviour.
//!
//! Channels are normally owned by a [`Coordinator`] (the `shmringd` daemon, or one embedded
//! with [`Coordinator::start`]): a [`Client`] creates and opens them through it, and it checks
//! permissions, admits participants and repairs what a crashed one left (see [`Client`]).
//! Without one, a [`Segment`] can be created and opened by name directly:
//!
//! ```
//! use shmring::{ChannelConfig, Segment};
//!
//! // Process A creates the channel and produces...
//! let name = format!("doc-lib-{}", std::process::id());
//! let seg = Segment::create(&name, &ChannelConfig::spsc())?;
//! let mut tx = seg.producer()?;
//! tx.send(b"tick 1")?;
//!
//! // ...process B opens it by name and consumes.
//! let mut rx = Segment::open(&name)?.consumer()?;
//! let frame = rx.read()?;
//! assert_eq!(&*frame, b"tick 1");
//! drop(frame);
//! Segment::unlink(&name)?;
//! # Ok::<(), shmring::Error>(())
//! ```
//!
//! The byte layout of a segment, for readers in other languages, is documented in [`layout`].

#![warn(missing_docs)]
// A loom build compiles only the ring cores and their models; what serves the handles is unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod broadcast;
mod checkpoint;
mod error;
pub mod layout;
mod message;
mod mpmc;
mod region;
mod repair;
mod spsc;
mod sync;
pub mod units;

#[cfg(not(loom))]
mod client;
#[cfg(not(loom))]
mod consumer;
#[cfg(not(loom))]
mod coordinator;
#[cfg(not(loom))]
mod guard;
#[cfg(not(loom))]
mod partition;
#[cfg(not(loom))]
mod pollable;
#[cfg(not(loom))]
mod producer;
#[cfg(not(loom))]
pub mod protocol;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod sys;
#[cfg(all(feature = "tokio", not(loom)))]
pub mod tokio;
#[cfg(not(loom))]
mod wait;

#[cfg(all(test, not(loom)))]
mod regressions;
#[cfg(all(test, not(loom)))]
mod tests;

/// The README's Rust example, compiled and run as a doctest.
#[cfg(all(doctest, not(loom)))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;

pub use error::{Error, Result};
pub use layout::{ChannelConfig, Geometry, Kind, Origin, Overflow, Role};

#[cfg(not(loom))]
pub use client::{Client, DEFAULT_REQUEST_TIMEOUT};
#[cfg(not(loom))]
pub use consumer::{
    Consumer, DetachedFrame, Frame, FrameFlags, Frames, HeldPosition, OwnedFrame, Received,
};
#[cfg(not(loom))]
pub use coordinator::{
    Coordinator, CoordinatorConfig, DEFAULT_MAX_BYTES_PER_UID, DEFAULT_MAX_CHANNEL_BYTES,
    DEFAULT_MAX_CHANNELS_PER_UID, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID,
    DEFAULT_MESSAGE_TIMEOUT, DEFAULT_NAMESPACE, SOCKET_ENV, default_socket_path,
};
#[cfg(not(loom))]
pub use partition::{GroupConsumer, KeyedProducer, partition_of};
#[cfg(not(loom))]
pub use pollable::{FD_RECHECK_INTERVAL, FdBackend, set_fd_backend, set_fd_recheck_interval};
#[cfg(not(loom))]
pub use producer::{Batch, Claim, DetachedClaim, Producer};
#[cfg(not(loom))]
pub use protocol::{ChannelInfo, ChannelStats, Limits, ParticipantInfo};
#[cfg(not(loom))]
pub use segment::{
    DEFAULT_OPEN_TIMEOUT, MAX_NAME_LEN, ParticipantStats, Segment, SegmentStats, validate_name,
};
#[cfg(not(loom))]
pub use wait::{FALLBACK_SLEEP, RECHECK_INTERVAL, WaitStrategy};
