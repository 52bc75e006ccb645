//! The benchmark's second process (`shmring bench-peer`, started by `shmring bench`): echoes
//! ping-pong frames and consumes throughput runs, as the parent commands through the control
//! page. The broadcast fan-out runs start a second one (`--index 1`), with command and
//! acknowledgement lines of its own: the two subscribe to the parent's broadcast channel.

use super::shared::Shared;
use super::shared::{Bulk, spin_until_changed};
use super::transport::{Api, Ends, PATIENCE, Res, Transport, consume, consume_messages};
use super::{OP_EXIT, OP_FANOUT, OP_FLOOR, OP_MESSAGES, OP_PINGPONG, OP_THROUGHPUT};
use shmring::{Client, Kind, Overflow, WaitStrategy};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Runs peer `index` (0 or 1) until told to exit. Errors are reported to the parent through
/// the control page (and on standard error). The peer dies with its parent (`parent`), however
/// the parent ends.
pub fn run(
    control: &Path,
    socket: &Path,
    dir: &Path,
    cpu: Option<usize>,
    parent: u32,
    index: usize,
) -> Res<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if std::os::unix::process::parent_id() != parent {
        return Err("the bench that started this peer is gone".into());
    }
    if let Some(cpu) = cpu
        && !super::machine::pin(cpu)
    {
        eprintln!("shmring bench-peer: could not pin to CPU {cpu}; running unpinned");
    }
    let shared =
        Shared::map(control, false).map_err(|e| format!("mapping {}: {e}", control.display()))?;
    let ctl = shared.control();
    let (cmd, ack) = ctl.lines(index);
    let client = Client::connect(Some(socket)).map_err(|e| format!("connecting: {e}"))?;
    let mut ends = Ends::peer(client.clone(), dir);
    let mut seen = 0;
    loop {
        // Idle between commands: a light poll, not a spin (the parent times nothing then).
        let seq = loop {
            let s = cmd.0[0].load(Ordering::Acquire);
            if s != seen {
                break s;
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        seen = seq;
        let arg = |i: usize| cmd.0[i].load(Ordering::Relaxed);
        let (op, payload, iterations, port) = (arg(1), arg(3) as usize, arg(4), arg(5) as u16);
        let result = match op {
            OP_EXIT => {
                ack.0[1].store(seq, Ordering::Release);
                return Ok(());
            }
            OP_PINGPONG => Transport::from_id(arg(2))
                .ok_or_else(|| format!("unknown transport {}", arg(2)))
                .and_then(|t| {
                    ends.prepare(t, payload, port)?;
                    ack.0[0].store(seq, Ordering::Release);
                    ends.echo(ctl, t, payload, iterations, port)
                }),
            OP_THROUGHPUT => {
                let kind = if arg(2) == 1 { Kind::Mpmc } else { Kind::Spsc };
                let api = if arg(6) == 1 {
                    Api::ZeroCopy
                } else {
                    Api::Copy
                };
                ends.channels(kind, payload, WaitStrategy::Spin)
                    .and_then(|(_, rx)| {
                        ack.0[0].store(seq, Ordering::Release);
                        consume(rx, api, PATIENCE)
                    })
                    .map(|n| ack.0[2].store(n, Ordering::Relaxed))
            }
            OP_FANOUT => {
                let overflow = if arg(2) == 1 {
                    Overflow::DropOldest
                } else {
                    Overflow::Block
                };
                let wait = if arg(6) == 1 {
                    WaitStrategy::Yield
                } else {
                    WaitStrategy::Spin
                };
                ends.subscriber(overflow, payload, wait).and_then(|rx| {
                    let missed = rx.missed();
                    ack.0[0].store(seq, Ordering::Release);
                    // One of the two may be stopped for a cell (`fanout`): it waits that
                    // much longer.
                    let patience = PATIENCE + Duration::from_millis(iterations);
                    let n = consume(rx, Api::Copy, patience)?;
                    ack.0[2].store(n, Ordering::Relaxed);
                    ack.0[4].store(rx.missed() - missed, Ordering::Relaxed);
                    Ok(())
                })
            }
            OP_MESSAGES => {
                let kind = match arg(2) {
                    1 => Kind::Broadcast,
                    2 => Kind::Mpmc,
                    _ => Kind::Spsc,
                };
                let channel = super::transport::message_channel(kind, payload);
                client
                    .consumer(&channel)
                    .map_err(|e| format!("opening {channel}: {e}"))
                    .and_then(|mut rx| {
                        rx.set_wait_strategy(WaitStrategy::Spin);
                        // Open (a subscriber counted) before the parent sends.
                        ack.0[0].store(seq, Ordering::Release);
                        consume_messages(&mut rx, payload)
                    })
                    .map(|n| ack.0[2].store(n, Ordering::Relaxed))
            }
            OP_FLOOR => {
                let path = dir.join(format!("floor-{payload}"));
                Bulk::map(&path, payload, false)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|bulk| {
                        let mut copy = vec![0u8; payload];
                        ack.0[0].store(seq, Ordering::Release);
                        let (word, done) = (&ctl.floor.0[0], &ctl.floor.0[1]);
                        let mut n = 0u64;
                        loop {
                            // The parent's next copy is in (or it says the end).
                            if !spin_until_changed(word, n, PATIENCE) {
                                return Err("the parent stopped copying".into());
                            }
                            let m = word.load(Ordering::Acquire);
                            if m == u64::MAX {
                                break;
                            }
                            bulk.read_into(&mut copy);
                            std::hint::black_box(&copy);
                            n = m;
                            done.store(n, Ordering::Release);
                        }
                        ack.0[2].store(n, Ordering::Relaxed);
                        Ok(())
                    })
            }
            other => Err(format!("unknown command {other}")),
        };
        if let Err(e) = &result {
            ack.0[3].store(1, Ordering::Relaxed);
            eprintln!("shmring bench-peer: {e}");
        }
        ack.0[1].store(seq, Ordering::Release);
        result?;
    }
}
