//! Property tests: random sequences of operations with random frame sizes (0 to the maximum)
//! against a model queue. Small rings make every run wrap around many times.

#![cfg(not(loom))]

use proptest::prelude::*;
use shmring::{ChannelConfig, Error, Kind, Segment};
use std::collections::VecDeque;

const MAX_FRAME: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    /// Claim `.0` bytes, commit the first `.1` of them.
    ClaimCommit(usize, usize),
    Abort(usize),
    Batch(Vec<usize>),
    Recv,
    /// Receive into a buffer of this size (may be too small).
    RecvInto(usize),
    Read,
    Drain(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let len = 0..=MAX_FRAME;
    prop_oneof![
        4 => len.clone().prop_map(Op::Send),
        2 => (len.clone(), any::<prop::sample::Index>())
            .prop_map(|(l, i)| Op::ClaimCommit(l, i.index(l + 1))),
        1 => len.clone().prop_map(Op::Abort),
        1 => prop::collection::vec(len.clone(), 0..6).prop_map(Op::Batch),
        3 => Just(Op::Recv),
        1 => len.prop_map(Op::RecvInto),
        2 => Just(Op::Read),
        1 => (0usize..8).prop_map(Op::Drain),
    ]
}

/// The frame with sequence number `seq`: length `len`, bytes that identify it.
fn frame(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(151).wrapping_add(i as u8) ^ (seq >> 8) as u8)
        .collect()
}

struct Harness {
    seg: Segment,
    tx: shmring::Producer,
    rx: shmring::Consumer,
    model: VecDeque<Vec<u8>>,
    seq: u64,
    received: u64,
}

impl Harness {
    fn new(cfg: &ChannelConfig) -> Harness {
        let seg = Segment::anonymous(cfg).unwrap();
        let tx = seg.producer().unwrap();
        let rx = seg.consumer().unwrap();
        Harness {
            seg,
            tx,
            rx,
            model: VecDeque::new(),
            seq: 0,
            received: 0,
        }
    }

    fn next_frame(&mut self, len: usize) -> Vec<u8> {
        self.seq += 1;
        frame(self.seq, len)
    }

    fn expect(&mut self, got: &[u8]) {
        let want = self
            .model
            .pop_front()
            .expect("received a frame that was never sent");
        assert_eq!(got, &want[..], "frame {} differs", self.received);
        self.received += 1;
    }

    fn empty(&self, e: &Error) {
        assert!(
            matches!(e, Error::WouldBlock("empty")),
            "unexpected error {e}"
        );
        assert!(
            self.model.is_empty(),
            "{} published frames are not visible",
            self.model.len()
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Send(len) => {
                let f = self.next_frame(*len);
                match self.tx.try_send(&f) {
                    Ok(()) => self.model.push_back(f),
                    Err(Error::WouldBlock("full")) => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            Op::ClaimCommit(len, keep) => {
                let f = self.next_frame(*keep);
                match self.tx.try_claim(*len) {
                    Ok(mut c) => {
                        assert_eq!(c.len(), *len);
                        c[..*keep].copy_from_slice(&f);
                        c.commit_len(*keep).unwrap();
                        self.model.push_back(f);
                    }
                    Err(Error::WouldBlock("full")) => {}
                    Err(e) => panic!("claim: {e}"),
                }
            }
            Op::Abort(len) => match self.tx.try_claim(*len) {
                Ok(mut c) => {
                    c.fill(0xEE);
                    c.abort();
                }
                Err(Error::WouldBlock("full")) => {}
                Err(e) => panic!("claim: {e}"),
            },
            Op::Batch(lens) => {
                let frames: Vec<Vec<u8>> = lens.iter().map(|&l| self.next_frame(l)).collect();
                match self.tx.try_send_batch(frames.iter().map(|f| &f[..])) {
                    Ok(n) => self.model.extend(frames.into_iter().take(n)),
                    Err(Error::WouldBlock("full")) => {}
                    Err(e) if frames.is_empty() => panic!("empty batch: {e}"),
                    Err(e) => panic!("batch: {e}"),
                }
            }
            Op::Recv => {
                let mut buf = [0u8; MAX_FRAME];
                match self.rx.try_recv(&mut buf) {
                    Ok(r) => {
                        assert!(!r.flags.is_redelivered());
                        self.expect(&buf[..r.len]);
                    }
                    Err(e) => self.empty(&e),
                }
            }
            Op::RecvInto(cap) => {
                let mut buf = vec![0u8; *cap];
                match self.rx.try_recv(&mut buf) {
                    Ok(r) => self.expect(&buf[..r.len]),
                    Err(Error::BufferTooSmall { needed, cap: c }) => {
                        assert_eq!(c, *cap);
                        assert_eq!(needed, self.model.front().expect("a frame waits").len());
                        assert!(needed > *cap);
                    }
                    Err(e) => self.empty(&e),
                }
            }
            Op::Read => match self.rx.try_read().map(|f| f.to_vec()) {
                Ok(got) => self.expect(&got),
                Err(e) => self.empty(&e),
            },
            Op::Drain(n) => {
                let mut got = Vec::new();
                match self.rx.try_drain(*n, |f, _| got.push(f.to_vec())) {
                    Ok(k) => {
                        assert_eq!(k, got.len());
                        assert_eq!(k, (*n).min(self.model.len()));
                        for g in got {
                            self.expect(&g);
                        }
                    }
                    Err(e) => self.empty(&e),
                }
            }
        }
    }

    fn finish(mut self) {
        let mut buf = [0u8; MAX_FRAME];
        while let Ok(r) = self.rx.try_recv(&mut buf) {
            let got = buf[..r.len].to_vec();
            self.expect(&got);
        }
        assert!(self.model.is_empty(), "{} frames lost", self.model.len());
        assert_eq!(self.seg.stats().depth, 0);
    }
}

fn run(cfg: ChannelConfig, ops: &[Op]) {
    let mut h = Harness::new(&cfg);
    for op in ops {
        h.apply(op);
    }
    h.finish();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A 256-byte ring holds at most three 72-byte records: nearly every operation wraps.
    #[test]
    fn spsc_matches_a_queue(ops in prop::collection::vec(op(), 1..400)) {
        run(ChannelConfig::spsc().capacity(256).max_frame_size(MAX_FRAME as u32), &ops);
    }

    #[test]
    fn spsc_larger_ring_matches_a_queue(ops in prop::collection::vec(op(), 1..400)) {
        run(ChannelConfig::spsc().capacity(1024).max_frame_size(MAX_FRAME as u32), &ops);
    }

    /// Four slots: every fifth operation or so is on a new lap.
    #[test]
    fn mpmc_matches_a_queue(ops in prop::collection::vec(op(), 1..400)) {
        let cfg = ChannelConfig::mpmc().capacity(4 * MAX_FRAME as u64).max_frame_size(MAX_FRAME as u32);
        assert_eq!(Segment::anonymous(&cfg).unwrap().geometry().capacity, 4);
        run(cfg, &ops);
    }
}

/// The property tests exercise wrap-around: check that a typical run really laps the ring.
#[test]
fn sequences_wrap_many_times() {
    for kind in [Kind::Spsc, Kind::Mpmc] {
        let cfg = match kind {
            Kind::Spsc => ChannelConfig::spsc().capacity(256),
            Kind::Mpmc => ChannelConfig::mpmc().capacity(4 * MAX_FRAME as u64),
            Kind::Broadcast => unreachable!("the loop runs SPSC and MPMC"),
        }
        .max_frame_size(MAX_FRAME as u32);
        let mut h = Harness::new(&cfg);
        let ops: Vec<Op> = (0..300)
            .flat_map(|i| [Op::Send(i % (MAX_FRAME + 1)), Op::Recv])
            .collect();
        for op in &ops {
            h.apply(op);
        }
        let sent_bytes: u64 = (0..300u64).map(|i| (8 + (i % 65) + 7) & !7).sum();
        let laps = match kind {
            Kind::Spsc => sent_bytes / 256,
            Kind::Mpmc => 300 / 4,
            Kind::Broadcast => unreachable!("the loop runs SPSC and MPMC"),
        };
        assert!(laps >= 40, "{kind}: only {laps} laps");
        assert_eq!(h.received, 300);
        h.finish();
    }
}
