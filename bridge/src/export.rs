//! The exporting side: consumes a local channel and publishes every frame on a Zenoh key,
//! keeping each one until an importer acknowledges that it produced it.
//!
//! From an SPSC channel the frames are *held* in the ring ([`Consumer::try_recv_held`]) until
//! acknowledged: if the exporter dies, the channel's next consumer (a restarted exporter)
//! receives them again, flagged redelivered, so nothing is lost even then. From an MPMC or
//! broadcast channel, or as a member of a consumer group, frames are released as they are
//! received and kept in the exporter's memory until acknowledged: a connection cut or an
//! importer restart loses nothing, but an exporter that dies loses the frames it had sent and
//! not yet had acknowledged (at most the window).

use crate::wire::{self, Control, DataHeader, Kind};
use crate::{Error, Stop};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmring::{Client, Consumer, FrameFlags, GroupConsumer, HeldPosition};
use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zenoh::Wait;
use zenoh::qos::CongestionControl;

/// What an export does.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The local channel.
    pub channel: String,
    /// The Zenoh key the frames are published on (no wildcards).
    pub key: String,
    /// Consume as a member of this consumer group (a partitioned channel).
    pub group: Option<String>,
    /// Most frames sent and not yet acknowledged.
    pub window_frames: u64,
    /// Most bytes sent and not yet acknowledged (at least one frame is always allowed).
    pub window_bytes: u64,
    /// An importer not heard from for this long is given up: its acknowledgements stop
    /// holding frames back.
    pub importer_timeout: Duration,
    /// With frames unacknowledged and no acknowledgement for this long, a probe tells the
    /// importers which frame comes next, so that one that lost the last frames asks for them.
    pub probe_after: Duration,
    /// How long to spin on an empty channel before sleeping: what a frame that comes within it
    /// saves is a wake-up; what it costs is a core busy meanwhile.
    pub spin: Duration,
    /// Publish each frame at once, never batched with others by Zenoh: lower latency for a
    /// frame sent alone, less throughput for small frames (Zenoh's `express`).
    pub express: bool,
}

impl ExportOptions {
    /// Defaults: a window of 16384 frames or 16 MiB, importers given up after 2 s of silence,
    /// probes after 100 ms without an acknowledgement, no spinning on an empty channel, Zenoh's
    /// batching on.
    pub fn new(channel: &str, key: &str) -> ExportOptions {
        ExportOptions {
            channel: channel.into(),
            key: key.into(),
            group: None,
            window_frames: 16384,
            window_bytes: 16 << 20,
            importer_timeout: Duration::from_secs(2),
            probe_after: Duration::from_millis(100),
            spin: Duration::ZERO,
            express: false,
        }
    }
}

/// What an export did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Frames acknowledged by the importers (released locally).
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Samples sent again after a rewind.
    pub resent: u64,
    /// Rewinds (an importer asked for frames again, or a new one appeared).
    pub rewinds: u64,
    /// Whether the local stream ended and every frame of it was acknowledged.
    pub ended: bool,
}

/// Where the frames come from.
enum Source {
    /// SPSC: frames stay in the ring until acknowledged.
    Held(Consumer),
    /// MPMC, broadcast: released at once, copies kept.
    Copied(Consumer),
    /// A consumer-group member: released at once, copies kept.
    Group(GroupConsumer),
}

/// One frame sent and not acknowledged.
struct Entry {
    seq: u64,
    len: usize,
    flags: u8,
    /// Held: the position after it in the ring.
    pos: Option<HeldPosition>,
    /// Copied: its bytes.
    data: Option<Vec<u8>>,
}

/// What the importers said, written by Zenoh's callback, read by the export loop.
#[derive(Default)]
struct Heard {
    /// importer -> (next frame it needs of this stream, if it said; last heard).
    importers: HashMap<u64, (Option<u64>, Instant)>,
    /// The lowest frame an importer asked to have again.
    resend: Option<u64>,
    /// An importer not heard before appeared.
    joined: bool,
    /// Control samples that did not parse.
    refused: u64,
}

struct Shared {
    heard: Mutex<Heard>,
    changed: Condvar,
}

/// Exports `opts.channel` to `opts.key` on `session` until the local stream ends (returns
/// once every frame of it was acknowledged) or `stop` is set (frames not acknowledged stay
/// with the channel, for the next consumer, where they are held).
pub fn export(
    client: &Client,
    session: &zenoh::Session,
    opts: &ExportOptions,
    stop: &Stop,
) -> Result<ExportStats, Error> {
    if opts.key.contains('*') || opts.key.contains('$') {
        return Err(Error::Config(format!(
            "key {:?}: an export publishes on one key, without wildcards",
            opts.key
        )));
    }
    let mut source = match &opts.group {
        Some(g) => Source::Group(client.group_consumer(&opts.channel, g)?),
        None => {
            let c = client.consumer(&opts.channel)?;
            let info = client.list()?.into_iter().find(|i| i.name == opts.channel);
            let holds = info.is_some_and(|i| {
                i.kind == shmring::Kind::Spsc && c.max_message_size() == c.max_frame_size()
            });
            if holds {
                Source::Held(c)
            } else {
                Source::Copied(c)
            }
        }
    };
    let max = match &source {
        Source::Held(c) | Source::Copied(c) => c.max_message_size(),
        Source::Group(g) => g.max_frame_size(),
    };
    let shared = Arc::new(Shared {
        heard: Mutex::new(Heard::default()),
        changed: Condvar::new(),
    });
    let stream = wire::run_id();
    let cb = shared.clone();
    let _acks = session
        .declare_subscriber(wire::ack_key(&opts.key))
        .callback(move |sample| {
            let c = Control::parse(&sample.payload().to_bytes());
            let mut h = cb.heard.lock().unwrap_or_else(|e| e.into_inner());
            match c {
                Ok(c) => {
                    let now = Instant::now();
                    let known = h.importers.contains_key(&c.importer);
                    let entry = h.importers.entry(c.importer).or_insert((None, now));
                    entry.1 = now;
                    if c.stream == stream {
                        match c.kind {
                            Kind::Ack => entry.0 = Some(entry.0.map_or(c.next, |n| n.max(c.next))),
                            Kind::Resend => {
                                h.resend = Some(h.resend.map_or(c.next, |r| r.min(c.next)))
                            }
                            Kind::Hello => {}
                        }
                    }
                    if !known {
                        h.joined = true;
                    }
                }
                Err(_) => h.refused += 1,
            }
            drop(h);
            cb.changed.notify_one();
        })
        .wait()
        .map_err(|e| Error::Zenoh(format!("subscribing to {}: {e}", wire::ack_key(&opts.key))))?;
    let publisher = session
        .declare_publisher(opts.key.clone())
        .congestion_control(CongestionControl::Block)
        .express(opts.express)
        .wait()
        .map_err(|e| Error::Zenoh(format!("declaring the publisher on {}: {e}", opts.key)))?;
    tracing::info!(channel = %opts.channel, key = %opts.key, stream = format_args!("{stream:#x}"), "exporting");

    let mut st = ExportStats::default();
    let mut buf = vec![0u8; wire::DATA_HEADER + max];
    let mut unacked: VecDeque<Entry> = VecDeque::new();
    let mut unacked_bytes = 0u64;
    // The oldest frame not acknowledged, the next to send, the highest sent.
    let (mut base, mut next, mut high) = (1u64, 1u64, 0u64);
    // Copied sources: the index in `unacked` to send again from.
    let mut resend_at: Option<usize> = None;
    let mut ended: Option<u64> = None;
    let mut last_progress = Instant::now();
    let mut last_probe = Instant::now();
    let mut last_rewind: Option<(Instant, u64)> = None;
    let mut warned_refused = 0;

    let publish = |buf: &mut [u8], len: usize, h: DataHeader| -> Result<(), Error> {
        h.write(&mut buf[..wire::DATA_HEADER]);
        publisher
            .put(buf[..wire::DATA_HEADER + len].to_vec())
            .wait()
            .map_err(|e| Error::Zenoh(format!("publishing on {}: {e}", opts.key)))
    };

    loop {
        if stop.is_set() {
            if let Source::Held(c) = &mut source {
                // What was sent and not acknowledged stays in the ring for the next consumer.
                c.rewind_held();
            }
            return Ok(st);
        }
        // What the importers said.
        let (live, acked, resend, joined) = {
            let mut h = shared.heard.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            h.importers
                .retain(|_, (_, heard)| now.duration_since(*heard) < opts.importer_timeout);
            let acked = if h.importers.is_empty() {
                base
            } else {
                h.importers
                    .values()
                    .map(|(n, _)| n.unwrap_or(base))
                    .min()
                    .unwrap_or(base)
            };
            if h.refused > warned_refused {
                tracing::warn!(
                    refused = h.refused,
                    "samples on the acknowledgement key that are not a bridge's"
                );
                warned_refused = h.refused;
            }
            (
                h.importers.len(),
                acked,
                h.resend.take(),
                std::mem::take(&mut h.joined),
            )
        };
        // Release what every live importer produced.
        if acked > base && acked <= next {
            let mut last = None;
            while unacked.front().is_some_and(|e| e.seq < acked) {
                let e = unacked.pop_front().unwrap();
                unacked_bytes -= e.len as u64;
                st.frames += 1;
                st.bytes += e.len as u64;
                last = e.pos.or(last);
                resend_at = resend_at.map(|i| i.saturating_sub(1));
            }
            if let (Some(pos), Source::Held(c)) = (last, &mut source) {
                c.release_held(pos)?;
            }
            base = acked;
            last_progress = Instant::now();
            if ended.is_some_and(|e| base > e) {
                st.ended = true;
                tracing::info!(frames = st.frames, "stream ended, every frame acknowledged");
                return Ok(st);
            }
        }
        // Send again from the oldest frame not acknowledged: asked for, or a new importer.
        let rewind = joined
            || resend.is_some_and(|r| {
                // A request the last rewind already answers is not repeated.
                !last_rewind.is_some_and(|(at, from)| {
                    at.elapsed() < Duration::from_millis(200) && from <= r
                })
            });
        if rewind && next > base {
            st.rewinds += 1;
            tracing::debug!(
                base,
                next,
                joined,
                "sending again from the oldest unacknowledged"
            );
            match &mut source {
                Source::Held(c) => {
                    c.rewind_held();
                    unacked.clear();
                    unacked_bytes = 0;
                }
                _ => resend_at = (!unacked.is_empty()).then_some(0),
            }
            next = base;
            last_rewind = Some((Instant::now(), base));
        }
        if live == 0 {
            // Nobody listens: whatever is published now is lost on the way. Wait for one.
            wait_heard(&shared, Duration::from_millis(20));
            continue;
        }
        let full = next - base >= opts.window_frames
            || (unacked_bytes >= opts.window_bytes && next > base);
        let done_sending = ended.is_some_and(|e| next > e);
        if full || done_sending {
            if next > base
                && last_progress.elapsed() >= opts.probe_after
                && last_probe.elapsed() >= opts.probe_after
            {
                publish(
                    &mut buf,
                    0,
                    DataHeader {
                        flags: wire::PROBE,
                        stream,
                        seq: next,
                        base,
                    },
                )?;
                last_probe = Instant::now();
            }
            wait_heard(&shared, Duration::from_millis(10));
            continue;
        }
        // The next frame: one to send again, the end of the stream, or a new one.
        let resent = next <= high;
        let again = if resent { wire::RESENT } else { 0 };
        if let Some(i) = resend_at {
            let e = &unacked[i];
            buf[wire::DATA_HEADER..wire::DATA_HEADER + e.len]
                .copy_from_slice(e.data.as_deref().unwrap_or_default());
            let h = DataHeader {
                flags: e.flags | wire::RESENT,
                stream,
                seq: e.seq,
                base,
            };
            publish(&mut buf, e.len, h)?;
            st.resent += 1;
            next = e.seq + 1;
            resend_at = (i + 1 < unacked.len()).then_some(i + 1);
            continue;
        }
        if ended == Some(next) {
            let h = DataHeader {
                flags: wire::END | again,
                stream,
                seq: next,
                base,
            };
            publish(&mut buf, 0, h)?;
            high = high.max(next);
            next += 1;
            continue;
        }
        let got = match &mut source {
            Source::Held(c) => c
                .try_recv_held(&mut buf[wire::DATA_HEADER..])
                .map(|r| (r.len, r.flags, Some(c.held_position()))),
            Source::Copied(c) => c
                .try_recv(&mut buf[wire::DATA_HEADER..])
                .map(|r| (r.len, r.flags, None)),
            Source::Group(g) => g
                .try_recv(&mut buf[wire::DATA_HEADER..])
                .map(|r| (r.len, r.flags, None)),
        };
        match got {
            Ok((len, flags, pos)) => {
                let flags = if flags.contains(FrameFlags::REDELIVERED) {
                    wire::REDELIVERED
                } else {
                    0
                };
                let data = match &source {
                    Source::Held(_) => None,
                    _ => Some(buf[wire::DATA_HEADER..wire::DATA_HEADER + len].to_vec()),
                };
                unacked.push_back(Entry {
                    seq: next,
                    len,
                    flags,
                    pos,
                    data,
                });
                unacked_bytes += len as u64;
                let h = DataHeader {
                    flags: flags | again,
                    stream,
                    seq: next,
                    base,
                };
                publish(&mut buf, len, h)?;
                if resent {
                    st.resent += 1;
                }
                high = high.max(next);
                next += 1;
            }
            Err(shmring::Error::WouldBlock(_)) => {
                if next > base
                    && last_progress.elapsed() >= opts.probe_after
                    && last_probe.elapsed() >= opts.probe_after
                {
                    publish(
                        &mut buf,
                        0,
                        DataHeader {
                            flags: wire::PROBE,
                            stream,
                            seq: next,
                            base,
                        },
                    )?;
                    last_probe = Instant::now();
                }
                wait_frame(&mut source, opts.spin)?;
            }
            Err(shmring::Error::Closed(_)) => {
                if ended.is_none() {
                    tracing::info!(last = next - 1, "the local stream ended");
                }
                ended = Some(next);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits up to `timeout` for an importer to say something.
fn wait_heard(shared: &Shared, timeout: Duration) {
    let h = shared.heard.lock().unwrap_or_else(|e| e.into_inner());
    let _ = shared.changed.wait_timeout(h, timeout);
}

/// Waits briefly for the next local frame: spins first, for `spin` (the latency of a frame
/// that comes at once), then sleeps on the consumer's pollable descriptor (armed by the receive that found
/// the ring empty), up to 10 ms so that acknowledgements are looked at.
fn wait_frame(source: &mut Source, spin: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let c = match source {
        Source::Held(c) | Source::Copied(c) => c,
        Source::Group(g) => return Ok(g.wait_for_frames(Duration::from_millis(10))?),
    };
    while start.elapsed() < spin {
        std::hint::spin_loop();
        if c.ready() {
            return Ok(());
        }
    }
    let fd = c.fd()?;
    // SAFETY: the consumer owns the descriptor and outlives this borrow.
    let mut fds = [PollFd::new(
        unsafe { BorrowedFd::borrow_raw(fd) },
        PollFlags::POLLIN,
    )];
    match poll(&mut fds, PollTimeout::from(10u16)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(Error::Io(format!("poll: {e}"))),
    }
}
