//! The one error type of the crate.
//!
//! Back-pressure (`WouldBlock`, `TimedOut`) is kept apart from failures, as Aeron's offer codes
//! are: [`Error::is_back_pressure`] tells them apart without matching.

use std::io;

/// Everything a shmring call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ring is full (send, claim) or empty (recv, read): try again later.
    #[error("the ring is {0}: nothing can be done without waiting")]
    WouldBlock(&'static str),
    /// A timed call waited for its whole timeout.
    #[error("timed out after waiting {0:?}")]
    TimedOut(std::time::Duration),
    /// The peer side is gone or the handle was closed.
    #[error("closed: {0}")]
    Closed(String),
    /// A frame is longer than the channel allows: its `max_message_size` for a send, its
    /// `max_frame_size` for a claim.
    #[error(
        "frame of {len} bytes exceeds the channel's limit of {max} bytes (max_message_size for a send, max_frame_size for a claim)"
    )]
    FrameTooLarge {
        /// Length of the frame offered.
        len: usize,
        /// The channel's largest frame.
        max: usize,
    },
    /// The caller's buffer cannot hold the next frame; the frame was left unread.
    #[error(
        "buffer of {cap} bytes is too small for the next frame of {needed} bytes (frame left unread)"
    )]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        cap: usize,
    },
    /// A value read from shared memory breaks the protocol: another process wrote garbage, or
    /// the segment was damaged. The call did nothing unsafe; the channel may be unusable.
    #[error("corrupted segment: {0}")]
    Corrupted(String),
    /// The segment was made by an incompatible version of shmring, or is not a shmring segment.
    #[error("incompatible segment: {0}")]
    Incompatible(String),
    /// Every participant entry of this role is taken (an SPSC channel admits one of each).
    #[error("busy: {0}")]
    Busy(String),
    /// No such segment.
    #[error("not found: {0}")]
    NotFound(String),
    /// A segment of that name exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The operating system refused access.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The segment is not ready (its creator is still initialising it, or died doing so).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// `true` for `WouldBlock` and `TimedOut`: conditions that waiting can clear.
    pub fn is_back_pressure(&self) -> bool {
        matches!(self, Error::WouldBlock(_) | Error::TimedOut(_))
    }

    /// Wraps an OS error with what was being done, mapping the errnos that have a variant of
    /// their own (`ENOENT`, `EEXIST`, `EACCES`/`EPERM`).
    pub(crate) fn os(context: impl Into<String>, err: impl Into<io::Error>) -> Error {
        let context = context.into();
        let source = err.into();
        match source.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound(context),
            Some(libc::EEXIST) => Error::AlreadyExists(context),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                Error::PermissionDenied(format!("{context}: {source}"))
            }
            _ => Error::Io { context, source },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
