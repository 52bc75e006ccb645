//! # shmring-bridge
//!
//! Forwards shmring channels between hosts over [Zenoh](https://zenoh.io): an *exporter*
//! consumes a local channel and publishes every frame on a Zenoh key; an *importer* on another
//! host subscribes to the key and produces every frame into a channel there. Producers and
//! consumers on both hosts are unchanged: they use their local coordinator and channels.
//!
//! What it promises (the README's "Across hosts" says the same for users):
//!
//! * **Order and boundaries.** Frames arrive in the order the exporter received them, each
//!   whole, with its redelivered flag.
//! * **Nothing dropped.** Zenoh runs reliable with blocking congestion control, and the
//!   importer produces with blocking sends: a slow consumer on the importing host slows the
//!   importer, which stops reading the connection, which makes the exporter's publications
//!   wait, which stops it consuming, which makes the producer on the exporting host wait.
//! * **Acknowledged delivery.** Each frame carries a stream (the exporter run) and a sequence
//!   number ([`wire`]); the importer acknowledges what it produced, and the exporter keeps
//!   every frame until then: from an SPSC channel in the ring itself. A connection cut, an
//!   importer restart or an exporter restart loses nothing (for an SPSC source); a frame that
//!   may reach the importing channel twice is flagged redelivered the second time.
//!
//! [`export()`] and [`import()`] run one channel each; the `shmring-bridge` program runs them
//! from its command line or a configuration file ([`config`]).

pub mod config;
pub mod export;
pub mod import;
pub mod session;
#[doc(hidden)]
pub mod testbed;
pub mod wire;

pub use export::{ExportOptions, ExportStats, export};
pub use import::{ImportOptions, ImportStats, import};
pub use session::Endpoints;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What stops a bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local channel or coordinator.
    #[error(transparent)]
    Shmring(#[from] shmring::Error),
    /// Zenoh.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The configuration or arguments.
    #[error("{0}")]
    Config(String),
    /// A system call.
    #[error("{0}")]
    Io(String),
}

/// A flag that asks running exports and imports to stop (set from a signal handler, say).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag not set.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks everything that watches this flag to stop.
    pub fn set(&self) {
        // Relaxed: a request looked at in a loop; nothing else is published with it.
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether stopping was asked.
    pub fn is_set(&self) -> bool {
        // Relaxed: as in `set`.
        self.0.load(Ordering::Relaxed)
    }
}
