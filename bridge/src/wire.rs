//! What the bridges put on Zenoh: each frame behind a 24-byte header on the channel's key, and
//! the importers' acknowledgements on the key's `@shmring-ack` chunk.
//!
//! All integers are little-endian. A sample that does not parse (another program publishing on
//! the key, a newer version) is refused with a reason and counted, never produced.
//!
//! Data sample (on `KEY`):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"SR"` |
//! | 2 | version (1) |
//! | 3 | flags: [`REDELIVERED`], [`RESENT`], [`END`], [`PROBE`] |
//! | 4..8 | `seq - base`: how far this frame is past the exporter's oldest unacknowledged one |
//! | 8..16 | stream: the exporter run's identity (random, new at every start) |
//! | 16..24 | seq: the frame's number in its stream, from 1 |
//! | 24.. | the frame's bytes (none for [`END`] and [`PROBE`]) |
//!
//! Control sample (on `KEY/@shmring-ack`), 32 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"SA"` |
//! | 2 | version (1) |
//! | 3 | kind: [`Kind::Ack`], [`Kind::Resend`] or [`Kind::Hello`] |
//! | 4..8 | zero |
//! | 8..16 | importer: the importer run's identity (random) |
//! | 16..24 | stream (zero in a hello) |
//! | 24..32 | next: every frame below it was produced into the importer's channel |

/// Bytes before a frame's own in a data sample.
pub const DATA_HEADER: usize = 24;
/// Bytes of a control sample.
pub const CONTROL_LEN: usize = 32;
/// The protocol version both sample kinds carry.
pub const VERSION: u8 = 1;

const DATA_MAGIC: [u8; 2] = *b"SR";
const CONTROL_MAGIC: [u8; 2] = *b"SA";

/// The frame was flagged redelivered on the exporting host (a consumer there died holding it),
/// or may have been produced already by an importer that died (see `import.rs`).
pub const REDELIVERED: u8 = 1;
/// Sent again after a rewind: an importer that took over the stream cannot tell whether its
/// predecessor produced it.
pub const RESENT: u8 = 2;
/// The exporting channel's stream ended here (its producers finished it): no frame.
pub const END: u8 = 4;
/// "The next frame is `seq`": sent when acknowledgements stop coming, so that an importer that
/// lost the stream's last frames (a connection cut) sees the gap. No frame.
pub const PROBE: u8 = 8;

const KNOWN_FLAGS: u8 = REDELIVERED | RESENT | END | PROBE;

/// The chunk appended to a channel's key for the acknowledgements. A chunk that starts with
/// `@` is matched only by itself, never by `*` or `**`, so a subscriber to `KEY/**` does not
/// receive them.
pub const ACK_SUFFIX: &str = "@shmring-ack";

/// The key of `key`'s acknowledgements.
pub fn ack_key(key: &str) -> String {
    format!("{key}/{ACK_SUFFIX}")
}

/// A data sample's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// [`REDELIVERED`], [`RESENT`], [`END`], [`PROBE`].
    pub flags: u8,
    /// The exporter run.
    pub stream: u64,
    /// This frame's number, from 1.
    pub seq: u64,
    /// The exporter's oldest frame not acknowledged when this one was sent (at most `seq`).
    pub base: u64,
}

impl DataHeader {
    /// Writes the header into the first [`DATA_HEADER`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        debug_assert!(self.base <= self.seq && self.seq - self.base <= u64::from(u32::MAX));
        out[0..2].copy_from_slice(&DATA_MAGIC);
        out[2] = VERSION;
        out[3] = self.flags;
        out[4..8].copy_from_slice(&((self.seq - self.base) as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.stream.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Parses a data sample: its header and the frame's bytes.
    pub fn parse(sample: &[u8]) -> Result<(DataHeader, &[u8]), String> {
        if sample.len() < DATA_HEADER {
            return Err(format!(
                "{} bytes, shorter than the {DATA_HEADER}-byte header",
                sample.len()
            ));
        }
        if sample[0..2] != DATA_MAGIC {
            return Err("no shmring-bridge header (another publisher on the key?)".into());
        }
        if sample[2] != VERSION {
            return Err(format!(
                "protocol version {} (this bridge speaks {VERSION})",
                sample[2]
            ));
        }
        let flags = sample[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let behind = u64::from(u32::from_le_bytes(sample[4..8].try_into().unwrap()));
        let stream = u64::from_le_bytes(sample[8..16].try_into().unwrap());
        let seq = u64::from_le_bytes(sample[16..24].try_into().unwrap());
        if seq == 0 || behind >= seq || stream == 0 {
            return Err(format!(
                "stream {stream:#x}, seq {seq}, base {} is not a valid position",
                seq.wrapping_sub(behind)
            ));
        }
        let frame = &sample[DATA_HEADER..];
        if flags & (END | PROBE) != 0 && !frame.is_empty() {
            return Err("an end or probe sample carries bytes".into());
        }
        Ok((
            DataHeader {
                flags,
                stream,
                seq,
                base: seq - behind,
            },
            frame,
        ))
    }
}

/// What a control sample says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Every frame of `stream` below `next` was produced: the exporter may release them.
    Ack = 1,
    /// Frame `next` of `stream` did not arrive, or this importer does not know the stream: the
    /// exporter sends again from its oldest unacknowledged frame.
    Resend = 2,
    /// "This importer is alive and listening" (every 200 ms, and at start).
    Hello = 3,
}

/// A control sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// What it says.
    pub kind: Kind,
    /// The importer run.
    pub importer: u64,
    /// The stream it is about (zero in a hello).
    pub stream: u64,
    /// The stream's next frame the importer needs.
    pub next: u64,
}

impl Control {
    /// The sample's bytes.
    pub fn to_bytes(&self) -> [u8; CONTROL_LEN] {
        let mut out = [0u8; CONTROL_LEN];
        out[0..2].copy_from_slice(&CONTROL_MAGIC);
        out[2] = VERSION;
        out[3] = self.kind as u8;
        out[8..16].copy_from_slice(&self.importer.to_le_bytes());
        out[16..24].copy_from_slice(&self.stream.to_le_bytes());
        out[24..32].copy_from_slice(&self.next.to_le_bytes());
        out
    }

    /// Parses a control sample.
    pub fn parse(sample: &[u8]) -> Result<Control, String> {
        if sample.len() != CONTROL_LEN || sample[0..2] != CONTROL_MAGIC {
            return Err("not a shmring-bridge acknowledgement".into());
        }
        if sample[2] != VERSION {
            return Err(format!(
                "protocol version {} (this bridge speaks {VERSION})",
                sample[2]
            ));
        }
        let kind = match sample[3] {
            1 => Kind::Ack,
            2 => Kind::Resend,
            3 => Kind::Hello,
            k => return Err(format!("unknown kind {k}")),
        };
        Ok(Control {
            kind,
            importer: u64::from_le_bytes(sample[8..16].try_into().unwrap()),
            stream: u64::from_le_bytes(sample[16..24].try_into().unwrap()),
            next: u64::from_le_bytes(sample[24..32].try_into().unwrap()),
        })
    }
}

/// A random non-zero identity for a bridge run (stream or importer).
pub fn run_id() -> u64 {
    let mut b = [0u8; 8];
    // getrandom(2) never fails for 8 bytes once the pool is initialised; fall back to the
    // clock and pid if it does.
    // SAFETY: `b` is a valid, writable 8-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let id = if n == 8 {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        t ^ (u64::from(std::process::id()) << 32)
    };
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_header_round_trips_and_bad_ones_are_refused() {
        let h = DataHeader {
            flags: REDELIVERED | RESENT,
            stream: 0xfeed,
            seq: 1000,
            base: 900,
        };
        let mut s = vec![0u8; DATA_HEADER + 3];
        h.write(&mut s);
        s[DATA_HEADER..].copy_from_slice(b"abc");
        let (back, frame) = DataHeader::parse(&s).unwrap();
        assert_eq!(back, h);
        assert_eq!(frame, b"abc");
        assert!(DataHeader::parse(&s[..10]).is_err());
        let mut bad = s.clone();
        bad[2] = 9;
        assert!(DataHeader::parse(&bad).unwrap_err().contains("version 9"));
        let mut bad = s.clone();
        bad[3] = 0x80;
        assert!(DataHeader::parse(&bad).is_err());
        let mut bad = s.clone();
        bad[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(DataHeader::parse(&bad).is_err());
        let mut end = s.clone();
        end[3] = END;
        assert!(
            DataHeader::parse(&end).is_err(),
            "an end sample carries no bytes"
        );
        assert!(DataHeader::parse(&end[..DATA_HEADER]).is_ok());
    }

    #[test]
    fn a_control_sample_round_trips_and_bad_ones_are_refused() {
        let c = Control {
            kind: Kind::Resend,
            importer: 7,
            stream: 8,
            next: 9,
        };
        assert_eq!(Control::parse(&c.to_bytes()).unwrap(), c);
        let mut bad = c.to_bytes();
        bad[3] = 0;
        assert!(Control::parse(&bad).is_err());
        assert!(Control::parse(&bad[..31]).is_err());
    }
}
