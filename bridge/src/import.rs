//! The importing side: subscribes to a Zenoh key and produces every frame into a local
//! channel, in order, once, acknowledging what it produced.
//!
//! Per exporter run (stream) the importer keeps the next frame it needs. A frame below it is a
//! duplicate (sent again after a rewind) and dropped; a frame past it means frames were lost on
//! the way (a connection cut): it is dropped and the exporter asked to send again from its
//! oldest unacknowledged frame. A stream the importer does not know (it just started, or the
//! exporter did) is taken up at the exporter's oldest unacknowledged frame, the only place
//! where nothing before it can be missing.
//!
//! Acknowledgements go out every `ack_frames` frames, whenever Zenoh's queue is found empty,
//! and with the hello every 200 ms. An importer that dies has produced frames it had not yet
//! acknowledged; its successor produces them again, flagged redelivered (see `wire::RESENT`).

use crate::wire::{self, Control, DataHeader, Kind};
use crate::{Error, Stop};
use shmring::{ChannelConfig, Client, FrameFlags, Producer};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use zenoh::Wait;
use zenoh::handlers::FifoChannel;
use zenoh::qos::CongestionControl;

/// How often an importer says it is alive (and repeats its acknowledgements).
pub const HELLO_INTERVAL: Duration = Duration::from_millis(200);

/// Most streams (exporter runs) an importer remembers; the one heard from longest ago is
/// forgotten first.
pub const MAX_STREAMS: usize = 64;

/// What an import does.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The Zenoh key subscribed to (no wildcards: one exporter's key).
    pub key: String,
    /// The local channel produced into.
    pub channel: String,
    /// Create the channel with this shape if it does not exist (else it must exist).
    pub create: Option<ChannelConfig>,
    /// Acknowledge after this many frames at the latest...
    pub ack_frames: u64,
    /// ...or this many bytes (an exporter holds what is not acknowledged in its ring, which
    /// must not fill up between two acknowledgements).
    pub ack_bytes: u64,
    /// Samples Zenoh queues for the importer; when full, Zenoh stops reading the connection,
    /// and the exporter's publications wait: the back-pressure across hosts.
    pub queue: usize,
}

impl ImportOptions {
    /// Defaults: acknowledgements every 256 frames or 256 KiB, a queue of 1024 samples, no
    /// creation.
    pub fn new(key: &str, channel: &str) -> ImportOptions {
        ImportOptions {
            key: key.into(),
            channel: channel.into(),
            create: None,
            ack_frames: 256,
            ack_bytes: 256 << 10,
            queue: 1024,
        }
    }
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Frames produced into the local channel.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, flagged redelivered.
    pub redelivered: u64,
    /// Duplicates dropped (frames sent again that had been produced).
    pub duplicates: u64,
    /// Frames that arrived past a gap and were asked for again.
    pub out_of_order: u64,
    /// Frames given up: acknowledged by another importer while this one was not heard from
    /// (see `ExportOptions::importer_timeout`), so the exporter no longer has them.
    pub lost: u64,
    /// Samples that were not a bridge's (refused, counted).
    pub refused: u64,
    /// Whether the stream ended (the exporting channel's producers finished it).
    pub ended: bool,
}

struct StreamState {
    next: Option<u64>,
    /// Frames sent again may have been produced by a predecessor of this importer: until a
    /// first-time frame arrives, they are produced flagged redelivered.
    suspect: bool,
    unacked: u64,
    unacked_bytes: u64,
    last_resend: Option<Instant>,
    heard: Instant,
}

/// Imports `opts.key` into `opts.channel` until the stream ends (the local producer is then
/// finished, and its consumers see the end after the last frame) or `stop` is set.
pub fn import(
    client: &Client,
    session: &zenoh::Session,
    opts: &ImportOptions,
    stop: &Stop,
) -> Result<ImportStats, Error> {
    if opts.key.contains('*') || opts.key.contains('$') {
        return Err(Error::Config(format!(
            "key {:?}: an import subscribes to one exporter's key, without wildcards",
            opts.key
        )));
    }
    if let Some(config) = &opts.create {
        match client.create(&opts.channel, config) {
            Ok(_) => tracing::info!(channel = %opts.channel, "created"),
            Err(shmring::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut producer = Some(client.producer(&opts.channel)?);
    let me = wire::run_id();
    let acks = session
        .declare_publisher(wire::ack_key(&opts.key))
        .congestion_control(CongestionControl::Block)
        .wait()
        .map_err(|e| Error::Zenoh(format!("declaring {}: {e}", wire::ack_key(&opts.key))))?;
    let sub = session
        .declare_subscriber(opts.key.clone())
        .with(FifoChannel::new(opts.queue.max(1)))
        .wait()
        .map_err(|e| Error::Zenoh(format!("subscribing to {}: {e}", opts.key)))?;
    tracing::info!(key = %opts.key, channel = %opts.channel, importer = format_args!("{me:#x}"), "importing");

    let send = |kind: Kind, stream: u64, next: u64| -> Result<(), Error> {
        let c = Control {
            kind,
            importer: me,
            stream,
            next,
        };
        acks.put(c.to_bytes().to_vec())
            .wait()
            .map_err(|e| Error::Zenoh(format!("acknowledging on {}: {e}", opts.key)))
    };
    let mut streams: HashMap<u64, StreamState> = HashMap::new();
    let mut st = ImportStats::default();
    let mut last_hello: Option<Instant> = None;
    let mut warned = 0;

    // Says hello and acknowledges every stream heard from recently.
    let hello = |streams: &mut HashMap<u64, StreamState>, last: &mut Option<Instant>| {
        if last.is_some_and(|t| t.elapsed() < HELLO_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        send(Kind::Hello, 0, 0)?;
        for (&stream, s) in streams.iter_mut() {
            if let Some(next) = s.next {
                send(Kind::Ack, stream, next)?;
                s.unacked = 0;
                s.unacked_bytes = 0;
            }
        }
        Ok::<(), Error>(())
    };

    loop {
        if stop.is_set() {
            last_hello = None;
            hello(&mut streams, &mut last_hello)?;
            return Ok(st);
        }
        hello(&mut streams, &mut last_hello)?;
        let sample = match sub.try_recv() {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Caught up: acknowledge now, then wait.
                for (&stream, s) in streams.iter_mut() {
                    if let (Some(next), true) = (s.next, s.unacked > 0) {
                        send(Kind::Ack, stream, next)?;
                        s.unacked = 0;
                        s.unacked_bytes = 0;
                    }
                }
                match sub.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(s)) => s,
                    Ok(None) => continue,
                    Err(e) => return Err(Error::Zenoh(format!("receiving: {e}"))),
                }
            }
            Err(e) => return Err(Error::Zenoh(format!("receiving: {e}"))),
        };
        let payload = sample.payload().to_bytes();
        let (h, frame) = match DataHeader::parse(&payload) {
            Ok(x) => x,
            Err(why) => {
                st.refused += 1;
                if st.refused > warned * 2 {
                    tracing::warn!(refused = st.refused, %why, "sample refused");
                    warned = st.refused;
                }
                continue;
            }
        };
        if !streams.contains_key(&h.stream) && streams.len() >= MAX_STREAMS {
            let oldest = streams.iter().min_by_key(|(_, s)| s.heard).map(|(&k, _)| k);
            if let Some(k) = oldest {
                streams.remove(&k);
            }
        }
        let s = streams.entry(h.stream).or_insert_with(|| StreamState {
            next: None,
            suspect: true,
            unacked: 0,
            unacked_bytes: 0,
            last_resend: None,
            heard: Instant::now(),
        });
        s.heard = Instant::now();
        let ask_again = |s: &mut StreamState, from: u64| -> Result<(), Error> {
            if s.last_resend
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
            {
                s.last_resend = Some(Instant::now());
                send(Kind::Resend, h.stream, from)?;
            }
            Ok(())
        };
        let next = match s.next {
            Some(n) if h.base > n => {
                // The exporter released frames this importer never produced: another importer
                // acknowledged them while this one was silent for longer than the exporter
                // waits. They are gone.
                st.lost += h.base - n;
                tracing::warn!(
                    lost = h.base - n,
                    "frames acknowledged by another importer while this one was not heard from"
                );
                s.next = Some(h.base);
                h.base
            }
            Some(n) => n,
            None if h.seq == h.base && h.flags & wire::PROBE == 0 => {
                tracing::info!(
                    stream = format_args!("{:#x}", h.stream),
                    from = h.seq,
                    "new stream"
                );
                s.next = Some(h.seq);
                h.seq
            }
            None => {
                // Joined midway: start at the exporter's oldest unacknowledged frame.
                ask_again(s, h.base)?;
                continue;
            }
        };
        if h.seq < next {
            if h.flags & wire::PROBE == 0 {
                st.duplicates += 1;
            }
            continue;
        }
        if h.seq > next {
            if h.flags & wire::PROBE == 0 {
                st.out_of_order += 1;
            }
            ask_again(s, next)?;
            continue;
        }
        if h.flags & wire::PROBE != 0 {
            continue; // nothing is missing
        }
        if h.flags & wire::END != 0 {
            s.next = Some(h.seq + 1);
            if let Some(p) = producer.take() {
                p.finish()?;
            }
            send(Kind::Ack, h.stream, h.seq + 1)?;
            st.ended = true;
            tracing::info!(
                frames = st.frames,
                "the stream ended; the channel is finished"
            );
            return Ok(st);
        }
        let redelivered =
            h.flags & wire::REDELIVERED != 0 || (h.flags & wire::RESENT != 0 && s.suspect);
        if h.flags & wire::RESENT == 0 {
            s.suspect = false;
        }
        let flags = if redelivered {
            FrameFlags::REDELIVERED
        } else {
            FrameFlags::NONE
        };
        let p = producer.as_mut().expect("only taken at the end");
        if !produce(p, frame, flags, stop, &mut || {
            hello(&mut streams, &mut last_hello)
        })? {
            continue; // stopped while waiting for room
        }
        let s = streams.get_mut(&h.stream).expect("inserted above");
        s.next = Some(h.seq + 1);
        s.unacked += 1;
        s.unacked_bytes += frame.len() as u64;
        st.frames += 1;
        st.bytes += frame.len() as u64;
        st.redelivered += u64::from(redelivered);
        if s.unacked >= opts.ack_frames || s.unacked_bytes >= opts.ack_bytes {
            send(Kind::Ack, h.stream, h.seq + 1)?;
            s.unacked = 0;
            s.unacked_bytes = 0;
        }
    }
}

/// Produces `frame` with `flags`, waiting for room as long as it takes (saying hello
/// meanwhile, so that the exporter keeps waiting for this importer). `false`: `stop` was set
/// first, nothing produced.
fn produce(
    p: &mut Producer,
    frame: &[u8],
    flags: FrameFlags,
    stop: &Stop,
    meanwhile: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<bool, Error> {
    const SLICE: Duration = Duration::from_millis(50);
    if frame.len() > p.max_frame_size() {
        if frame.len() > p.max_message_size() {
            return Err(Error::Config(format!(
                "a frame of {} bytes came, larger than the channel's largest message ({} bytes): \
                 create the channel with a larger --max-frame-size or --max-message-size (the \
                 frame stays with the exporter until an importer produces it)",
                frame.len(),
                p.max_message_size()
            )));
        }
        // A message longer than a frame: split by the producer (its flag is not carried).
        loop {
            match p.send_timeout(frame, SLICE) {
                Ok(()) => return Ok(true),
                Err(shmring::Error::WouldBlock(_) | shmring::Error::TimedOut(_)) => {
                    if stop.is_set() {
                        return Ok(false);
                    }
                    meanwhile()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    loop {
        match p.claim_timeout(frame.len(), SLICE) {
            Ok(mut claim) => {
                claim.copy_from_slice(frame);
                claim.commit_flagged(frame.len(), flags)?;
                return Ok(true);
            }
            Err(shmring::Error::WouldBlock(_) | shmring::Error::TimedOut(_)) => {
                if stop.is_set() {
                    return Ok(false);
                }
                meanwhile()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
