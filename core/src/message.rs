//! Messages longer than a frame: how a producer splits one into records and how a consumer
//! puts it back together.
//!
//! A message of up to `max_message_size` bytes that is longer than `max_frame_size` travels as
//! a `FIRST` record, whose payload starts with the whole message's length
//! ([`MESSAGE_PREFIX`] bytes), then `PART` records with the following bytes, in order. The
//! records are at most [`Geometry::max_fragment`] long. A consumer hands the message out only
//! once every byte has arrived; a message it stops receiving midway (its producer died or
//! timed out between two records, a predecessor consumer gave its first records back) is
//! dropped and counted, never delivered in part. ARCHITECTURE.md, "Messages longer than a
//! frame", has the protocol and what each ring adds to it.

use crate::error::{Error, Result};
use crate::layout::{Geometry, MESSAGE_PREFIX, RECORD_HEADER, record_size};
use crate::region::{DataRange, Memory};

/// The records a message of `len` bytes is split into: `(first, parts, last)` payload
/// lengths, where `first` includes the prefix, `parts` records carry `max_fragment` bytes each,
/// and `last` (zero: none) the rest.
pub(crate) fn split(geo: &Geometry, len: usize) -> (usize, u64, usize) {
    let frag = geo.max_fragment as usize;
    let first = (len + MESSAGE_PREFIX).min(frag);
    let rest = len + MESSAGE_PREFIX - first;
    (first, (rest / frag) as u64, rest % frag)
}

/// Bytes of SPSC ring that a message of `len` bytes needs to be written whole: its records,
/// one padding record at most (a message that fits the ring wraps at most once, and the
/// padding is shorter than the record that did not fit), and the zeroed header word after it.
pub(crate) fn spsc_need(geo: &Geometry, len: usize) -> u64 {
    let (first, parts, last) = split(geo, len);
    let frag = record_size(geo.max_fragment as usize) as u64;
    let last = if last > 0 {
        record_size(last) as u64
    } else {
        0
    };
    record_size(first) as u64 + parts * frag + last + frag + RECORD_HEADER as u64
}

/// What a record of a ring holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// A whole frame.
    Whole,
    /// The first record of a split message (its payload starts with the length prefix).
    First,
    /// A further record of a split message.
    More,
}

/// What a ring's `assemble` ended with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Assembled {
    /// A message, whole: its length and flags.
    Message(usize, u8),
    /// The next record is a whole frame: take it the usual way.
    Whole,
}

/// Where the bytes of a record are: in the ring (safe from the producer until released), or
/// a validated copy of them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src<'a> {
    /// In the ring.
    Ring(DataRange),
    /// Copied out.
    Bytes(&'a [u8]),
}

impl Src<'_> {
    fn len(&self) -> usize {
        match self {
            Src::Ring(r) => r.len(),
            Src::Bytes(b) => b.len(),
        }
    }
}

/// A message being put back together, kept by the consumer handle across calls.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    /// Between calls, the first `got` bytes of the message being assembled; a message
    /// assembled for [`Consumer::read`](crate::Consumer::read) whole, until the next receive.
    buf: Vec<u8>,
    /// Whether a message is being assembled.
    active: bool,
    /// Its whole length.
    total: usize,
    /// Bytes of it received so far.
    got: usize,
    /// The flags of its first record.
    flags: u8,
    /// Stepping over the rest of a message whose first record this consumer never received
    /// (it was counted in `missed` once).
    orphan: bool,
    /// What was dropped since the handle opened: messages (SPSC), or records (broadcast,
    /// `per_record`).
    missed: u64,
    /// Count what is dropped in records rather than messages (see `missed`).
    per_record: bool,
    /// Records of the message being assembled that count (see `took`).
    records: u64,
    /// Whether the bytes received so far are in the caller's buffer of the current call
    /// (else in `buf`).
    in_caller: bool,
    /// How the consumer wakes producers (`wait::notify`'s `light`).
    light: bool,
}

impl Assembly {
    /// An assembly that counts what it drops in messages, or (`per_record`) in records;
    /// `light` as the consumer's wake-ups.
    pub(crate) fn new(per_record: bool, light: bool) -> Assembly {
        Assembly {
            per_record,
            light,
            ..Assembly::default()
        }
    }

    /// Space was given back while a message streams through the ring: wakes a producer that
    /// waits for it (the message's next records need it before the receive returns).
    pub(crate) fn freed(&self, mem: &Memory) {
        #[cfg(not(loom))]
        crate::wait::notify(mem.consumer_line(), self.light);
        #[cfg(loom)]
        let _ = mem;
    }

    /// Whether a message is being assembled.
    #[inline(always)]
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// Bytes allocated for messages being put back together.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// What was dropped midway since the handle opened (see the field).
    pub(crate) fn missed(&self) -> u64 {
        self.missed
    }

    /// The whole message last assembled into the handle's buffer (`len` bytes).
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        &self.buf[..len]
    }

    /// Drops the message being assembled, counting it missed (as one message, or as the
    /// records of it that counted).
    pub(crate) fn abandon(&mut self) {
        if self.active {
            self.active = false;
            self.missed += if self.per_record { self.records } else { 1 };
        }
    }

    /// A record of the message being assembled was taken; `counted`: it counts if the message
    /// is dropped (broadcast: it is not history).
    pub(crate) fn took(&mut self, counted: bool) {
        self.records += u64::from(counted);
    }

    /// A `PART` record arrived with no message being assembled: the rest of one whose start
    /// was never received. Counts that message missed, once (or, per record, this record if
    /// `counted`); the caller steps over the record.
    pub(crate) fn orphan(&mut self, counted: bool) {
        if self.per_record {
            self.missed += u64::from(counted);
        } else if !self.orphan {
            self.orphan = true;
            self.missed += 1;
        }
    }

    /// A whole frame arrived: whatever came before it is over.
    pub(crate) fn whole(&mut self) {
        self.abandon();
        self.orphan = false;
    }

    /// Reads and checks the prefix of a `FIRST` record (`payload`): the message's length and
    /// where its first bytes are.
    pub(crate) fn first<'a>(mem: &Memory, payload: Src<'a>) -> Result<(usize, Src<'a>)> {
        let short = || {
            Error::Corrupted(format!(
                "the first record of a message is {} bytes long, shorter than its length prefix",
                payload.len()
            ))
        };
        let mut word = [0u8; MESSAGE_PREFIX];
        let data = match payload {
            Src::Ring(r) => {
                let (prefix, data) = r.split_at(MESSAGE_PREFIX).ok_or_else(short)?;
                mem.copy_out(prefix, &mut word);
                Src::Ring(data)
            }
            Src::Bytes(b) => {
                let (prefix, data) = b.split_at_checked(MESSAGE_PREFIX).ok_or_else(short)?;
                word.copy_from_slice(prefix);
                Src::Bytes(data)
            }
        };
        let total = u64::from_ne_bytes(word);
        let max = mem.geometry().max_message_size;
        if total > max || total < data.len() as u64 {
            return Err(Error::Corrupted(format!(
                "a message's first record gives its length as {total} bytes, outside {} to the \
                 channel's max_message_size of {max}",
                data.len()
            )));
        }
        // No overflow: total <= max_message_size, which `Geometry` keeps within an address space.
        Ok((total as usize, data))
    }

    /// Starts a message of `total` bytes flagged `flags`, dropping (and counting) one left
    /// unfinished. `own`: it is assembled in the handle's buffer rather than a caller's.
    pub(crate) fn start(&mut self, total: usize, flags: u8, own: bool) {
        self.abandon();
        self.orphan = false;
        self.active = true;
        self.total = total;
        self.got = 0;
        self.records = 0;
        self.flags = flags;
        self.in_caller = !own;
        if own {
            self.own();
        }
    }

    /// Makes the handle's buffer the message's home: it holds the `got` bytes received so
    /// far, and grows as more arrive (never to the length a `FIRST` record claims before the
    /// bytes are there: a producer that sends a first record of a huge message and nothing
    /// else costs the consumer what it sent, not what it claimed).
    fn own(&mut self) {
        self.buf.truncate(self.got);
    }

    /// Before a call adds the next record of a message that an earlier call began, for `dst`
    /// (a caller's buffer; `None`: the handle's own): `BufferTooSmall` if the message does not
    /// fit `dst`. The message goes on in the handle's buffer, and is copied to `dst` once
    /// whole (`complete`): a caller that waits in short timeouts costs one copy of what
    /// arrived per call, not one of everything so far.
    pub(crate) fn resume(&mut self, dst: Option<&mut [u8]>) -> Result<()> {
        if !self.active || self.in_caller {
            return Ok(());
        }
        if let Some(d) = dst
            && d.len() < self.total
        {
            return Err(Error::BufferTooSmall {
                needed: self.total,
                cap: d.len(),
            });
        }
        self.own();
        Ok(())
    }

    /// At the end of a call that assembled into `dst` without finishing the message: keeps the
    /// bytes received so far in the handle, for the next call.
    pub(crate) fn suspend(&mut self, dst: Option<&mut [u8]>) {
        if let (true, true, Some(d)) = (self.active, self.in_caller, dst) {
            self.buf.clear();
            self.buf.extend_from_slice(&d[..self.got]);
        }
        self.in_caller = false;
    }

    /// Whether `len` more bytes fit in the message being assembled.
    pub(crate) fn fits(&self, len: usize) -> Result<()> {
        if len <= self.total - self.got {
            Ok(())
        } else {
            Err(Error::Corrupted(format!(
                "a message of {} bytes continues past its end ({} received, {len} more)",
                self.total, self.got
            )))
        }
    }

    /// Appends the bytes of `src` (checked with `fits`) to the message: in `dst` if the
    /// message started in this call, else in the handle's buffer (see `resume`).
    pub(crate) fn put(&mut self, mem: &Memory, src: Src<'_>, dst: Option<&mut [u8]>) {
        let (from, to) = (self.got, self.got + src.len());
        let out = match dst {
            Some(d) if self.in_caller => &mut d[from..to],
            _ => {
                self.buf.resize(to, 0);
                &mut self.buf[from..to]
            }
        };
        match src {
            Src::Ring(r) => mem.copy_out(r, out),
            Src::Bytes(b) => out.copy_from_slice(b),
        }
        self.got = to;
    }

    /// If every byte arrived: ends the message (in `dst`, if given, copying it there from the
    /// handle's buffer if it was assembled there), returning its length and flags.
    pub(crate) fn complete(&mut self, dst: Option<&mut [u8]>) -> Option<(usize, u8)> {
        if !self.active || self.got != self.total {
            return None;
        }
        if let (false, Some(d)) = (self.in_caller, dst) {
            d[..self.total].copy_from_slice(&self.buf[..self.total]);
        }
        self.active = false;
        self.in_caller = false;
        Some((self.total, self.flags))
    }
}
