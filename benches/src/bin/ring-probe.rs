//! The measurements behind two design decisions of the SPSC ring (ARCHITECTURE.md):
//!
//! 1. **What the consumer polls.** Two processes, pinned, play ping-pong through two minimal
//!    byte rings in one shared mapping, in interleaved rounds with a one-cache-line atomic
//!    ping-pong (the floor):
//!    * `cursor`: the consumer polls the producer's published tail, then reads the record;
//!    * `header`: the consumer polls the next record's header word, which the producer zeroed
//!      before publishing the previous record (shmring's protocol);
//!    * `header+pf`: the same, prefetching the lines the next record is predicted to span.
//! 2. **What a wake-up check costs the producer.** One process streams frames to the other,
//!    with and without a SeqCst fence after every publish (what a waker needs before it looks
//!    for sleepers, unless the sleepers pay for it with `membarrier`).
//!
//! These rings are deliberately bare (no validation, no handles): they measure protocols, not
//! shmring. Usage: ring-probe [latency|throughput] [--iterations N] [--rounds N]

use std::sync::atomic::{AtomicU64, Ordering::*, fence};
use std::time::Instant;

const CAP: usize = 1 << 16;
const MASK: usize = CAP - 1;

#[repr(C, align(128))]
struct Line(AtomicU64);

#[repr(C)]
struct Ring {
    tail: Line,
    head: Line,
    data: [AtomicU64; CAP / 8],
}

#[repr(C)]
struct Shared {
    floor: Line,
    barrier: Line,
    rings: [Ring; 2],
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    Floor,
    Cursor,
    Header,
    HeaderPrefetch,
    HeaderFence,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Floor => "floor",
            Variant::Cursor => "cursor",
            Variant::Header => "header",
            Variant::HeaderPrefetch => "header+pf",
            Variant::HeaderFence => "header+fence",
        }
    }
}

fn word(r: &Ring, pos: usize) -> &AtomicU64 {
    &r.data[(pos & MASK) / 8]
}

fn bytes(r: &Ring, pos: usize) -> *mut u8 {
    // SAFETY: (pos & MASK) < CAP, the size of `data`; callers keep every copy inside the ring
    // (records never wrap: padding fills the end).
    unsafe { (r.data.as_ptr() as *mut u8).add(pos & MASK) }
}

struct Tx<'a> {
    r: &'a Ring,
    tail: usize,
    head_cache: usize,
}

impl Tx<'_> {
    fn send(&mut self, v: Variant, payload: &[u8]) {
        let size = (8 + payload.len() + 7) & !7;
        let pad = if (self.tail & MASK) + size > CAP {
            CAP - (self.tail & MASK)
        } else {
            0
        };
        // The record, any padding before it, and the zeroed next header must fit.
        while self.tail + pad + size + 8 - self.head_cache > CAP {
            self.head_cache = self.r.head.0.load(Acquire) as usize;
            std::hint::spin_loop();
        }
        if pad > 0 {
            word(self.r, self.tail + pad).store(0, Relaxed);
            word(self.r, self.tail).store((pad - 8) as u64 | 2 << 32, Release);
            self.tail += pad;
        }
        // SAFETY: the record lies inside the ring, in space the consumer has released.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                bytes(self.r, self.tail + 8),
                payload.len(),
            )
        };
        word(self.r, self.tail + size).store(0, Relaxed);
        word(self.r, self.tail).store(payload.len() as u64 | 1 << 32, Release);
        self.tail += size;
        match v {
            Variant::Cursor => self.r.tail.0.store(self.tail as u64, Release),
            Variant::HeaderFence => {
                fence(SeqCst);
                std::hint::black_box(self.r.tail.0.load(Relaxed));
            }
            _ => {}
        }
    }
}

struct Rx<'a> {
    r: &'a Ring,
    head: usize,
    tail_cache: usize,
    last: usize,
}

impl Rx<'_> {
    fn recv(&mut self, v: Variant, out: &mut [u8]) -> usize {
        loop {
            if v == Variant::Cursor {
                while self.tail_cache == self.head {
                    self.tail_cache = self.r.tail.0.load(Acquire) as usize;
                    std::hint::spin_loop();
                }
            }
            let h = loop {
                let h = word(self.r, self.head).load(Acquire);
                if h != 0 {
                    break h;
                }
                if v == Variant::HeaderPrefetch {
                    let off = self.head & MASK;
                    let next_line = (off | 63) + 1;
                    if off + self.last > next_line && off + self.last <= CAP {
                        prefetch(bytes(self.r, next_line));
                    }
                }
                std::hint::spin_loop();
            };
            let len = (h & 0xffff_ffff) as usize;
            let size = (8 + len + 7) & !7;
            self.head += size;
            if h >> 32 == 2 {
                continue;
            }
            // SAFETY: the record lies inside the ring and was published (Acquire above).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes(self.r, self.head - size + 8),
                    out.as_mut_ptr(),
                    len,
                )
            };
            self.last = size;
            self.r.head.0.store(self.head as u64, Release);
            return len;
        }
    }
}

fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data that sched_setaffinity reads.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Both processes meet here between cells.
fn barrier(sh: &Shared, k: u64) {
    sh.barrier.0.fetch_add(1, SeqCst);
    while sh.barrier.0.load(Acquire) < 2 * k {
        std::hint::spin_loop();
    }
}

fn reset(sh: &Shared) {
    sh.floor.0.store(0, Relaxed);
    for r in &sh.rings {
        r.tail.0.store(0, Relaxed);
        r.head.0.store(0, Relaxed);
        for w in &r.data {
            w.store(0, Relaxed);
        }
    }
}

/// Runs one latency cell; side 0 returns the p50 round trip in ns.
fn latency_cell(sh: &Shared, side: usize, v: Variant, payload: usize, n: usize) -> u64 {
    let mut lat = Vec::with_capacity(if side == 0 { n } else { 0 });
    if v == Variant::Floor {
        for i in 0..n as u64 {
            if side == 0 {
                let t = Instant::now();
                sh.floor.0.store(2 * i + 1, Release);
                while sh.floor.0.load(Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                lat.push(t.elapsed().as_nanos() as u64);
            } else {
                while sh.floor.0.load(Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                sh.floor.0.store(2 * i + 2, Release);
            }
        }
    } else {
        let mut tx = Tx {
            r: &sh.rings[side],
            tail: 0,
            head_cache: 0,
        };
        let mut rx = Rx {
            r: &sh.rings[1 - side],
            head: 0,
            tail_cache: 0,
            last: 0,
        };
        let msg = vec![7u8; payload];
        let mut buf = [0u8; 256];
        for _ in 0..n {
            if side == 0 {
                let t = Instant::now();
                tx.send(v, &msg);
                rx.recv(v, &mut buf);
                lat.push(t.elapsed().as_nanos() as u64);
            } else {
                let k = rx.recv(v, &mut buf);
                tx.send(v, &buf[..k]);
            }
        }
    }
    lat.sort_unstable();
    lat.get(lat.len() / 2).copied().unwrap_or(0)
}

/// Runs one throughput cell; side 0 sends, side 1 receives; returns ns per frame (side 0).
fn throughput_cell(sh: &Shared, side: usize, v: Variant, payload: usize, n: usize) -> f64 {
    let t = Instant::now();
    if side == 0 {
        let mut tx = Tx {
            r: &sh.rings[0],
            tail: 0,
            head_cache: 0,
        };
        let msg = vec![7u8; payload];
        for _ in 0..n {
            tx.send(v, &msg);
        }
    } else {
        let mut rx = Rx {
            r: &sh.rings[0],
            head: 0,
            tail_cache: 0,
            last: 0,
        };
        let mut buf = [0u8; 256];
        for _ in 0..n {
            rx.recv(v, &mut buf);
        }
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut mode = "latency".to_string();
    let (mut n, mut rounds) = (200_000usize, 5usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "latency" | "throughput" => mode = a,
            "--iterations" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N")
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            _ => {
                eprintln!("usage: ring-probe [latency|throughput] [--iterations N] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let cells: Vec<(Variant, usize)> = if mode == "latency" {
        let mut c = vec![(Variant::Floor, 0)];
        for v in [Variant::Cursor, Variant::Header, Variant::HeaderPrefetch] {
            c.extend([8, 56, 64].map(|p| (v, p)));
        }
        c
    } else {
        [Variant::Header, Variant::HeaderFence]
            .into_iter()
            .flat_map(|v| [8, 64].map(|p| (v, p)))
            .collect()
    };
    // SAFETY: a fresh shared anonymous mapping, checked below; all-zero bytes are a valid
    // `Shared` (atomics).
    let sh: &Shared = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Shared>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const Shared)
    };
    // A single-threaded process: fork is safe here.
    // SAFETY: fork in a process with one thread.
    let child = unsafe { libc::fork() };
    let side = usize::from(child == 0);
    pin(side);
    let mut k = 0;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
    for round in 0..rounds {
        for (i, &(v, p)) in cells.iter().enumerate() {
            k += 1;
            barrier(sh, k);
            if side == 0 {
                reset(sh);
            }
            k += 1;
            barrier(sh, k);
            let r = if mode == "latency" {
                latency_cell(sh, side, v, p, n) as f64
            } else {
                throughput_cell(sh, side, v, p, n * 20)
            };
            results[i].push(r);
        }
        if side == 0 {
            let line: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, (v, p))| {
                    let r = results[i][round];
                    if mode == "latency" {
                        format!(
                            "{}/{p}B {r:.0} ns ({:.2}x)",
                            v.name(),
                            r / results[0][round]
                        )
                    } else {
                        format!("{}/{p}B {:.1} Mf/s", v.name(), 1e3 / r)
                    }
                })
                .collect();
            println!("round {}: {}", round + 1, line.join("  "));
        }
    }
    if side == 0 {
        println!("median of the rounds:");
        for (i, (v, p)) in cells.iter().enumerate() {
            if mode == "latency" {
                let ratios: Vec<f64> = results[i]
                    .iter()
                    .zip(&results[0])
                    .map(|(a, b)| a / b)
                    .collect();
                println!(
                    "  {:<10} {p:>3} B  p50 {:>5.0} ns  {:.2}x floor",
                    v.name(),
                    median(results[i].clone()),
                    median(ratios)
                );
            } else {
                println!(
                    "  {:<12} {p:>3} B  {:>6.1} M frames/s",
                    v.name(),
                    1e3 / median(results[i].clone())
                );
            }
        }
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
}
