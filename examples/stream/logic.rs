//! What the stream processors compute, shared by the processors and the reference computation
//! (`processor.py` does the same, operation for operation, so that its floats are the same).
//!
//! Per symbol: a sliding window of the last `WINDOW` prices; after every `SHIFT` ticks once the
//! window is full, its average is emitted (window `i` ends at the symbol's tick
//! `WINDOW + i * SHIFT`); a tick whose price is more than `K` standard deviations from the mean
//! of the window before it is an anomaly.

use std::collections::{BTreeMap, VecDeque};

pub const WINDOW: usize = 60;
pub const SHIFT: u64 = 10;
pub const K: f64 = 4.0;
pub const PARTITIONS: u32 = 4;

/// A tick: symbol, its sequence number, price (32 bytes on the wire).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    pub symbol: u32,
    pub seq: u64,
    pub price: f64,
}

impl Tick {
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&self.symbol.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.price.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Tick> {
        (b.len() >= 24).then(|| Tick {
            symbol: u32::from_le_bytes(b[..4].try_into().unwrap()),
            seq: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            price: f64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    }

    /// The key frames of this symbol are sent with.
    pub fn key(symbol: u32) -> String {
        format!("SYM{symbol:03}")
    }
}

/// An output: a window's average (`kind` 1, `index` the window's number) or an anomaly
/// (`kind` 2, `index` the tick's sequence number, `value` its price).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Output {
    pub kind: u32,
    pub symbol: u32,
    pub index: u64,
    pub value: f64,
}

impl Output {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.symbol.to_le_bytes());
        b[8..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..24].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Output> {
        (b.len() >= 24).then(|| Output {
            kind: u32::from_le_bytes(b[..4].try_into().unwrap()),
            symbol: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            index: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            value: f64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    }
}

/// One symbol's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Symbol {
    pub count: u64,
    pub window: VecDeque<f64>,
}

/// The state of a processor for one partition: every symbol it has seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub symbols: BTreeMap<u32, Symbol>,
}

impl State {
    /// Folds tick `t` in; outputs go to `out`.
    pub fn apply(&mut self, t: &Tick, out: &mut impl FnMut(Output)) {
        let s = self.symbols.entry(t.symbol).or_default();
        if s.window.len() == WINDOW {
            let mut sum = 0.0;
            for &p in &s.window {
                sum += p;
            }
            let mean = sum / WINDOW as f64;
            let mut var = 0.0;
            for &p in &s.window {
                var += (p - mean) * (p - mean);
            }
            let std = (var / WINDOW as f64).sqrt();
            if std > 0.0 && (t.price - mean).abs() > K * std {
                out(Output {
                    kind: 2,
                    symbol: t.symbol,
                    index: t.seq,
                    value: t.price,
                });
            }
            s.window.pop_front();
        }
        s.window.push_back(t.price);
        s.count += 1;
        if s.count >= WINDOW as u64 && (s.count - WINDOW as u64).is_multiple_of(SHIFT) {
            let mut sum = 0.0;
            for &p in &s.window {
                sum += p;
            }
            out(Output {
                kind: 1,
                symbol: t.symbol,
                index: (s.count - WINDOW as u64) / SHIFT,
                value: sum / WINDOW as f64,
            });
        }
    }

    /// The checkpoint bytes: symbols, then per symbol its number, count, window length and
    /// prices (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((self.symbols.len() as u32).to_le_bytes());
        for (sym, s) in &self.symbols {
            b.extend(sym.to_le_bytes());
            b.extend(s.count.to_le_bytes());
            b.extend((s.window.len() as u32).to_le_bytes());
            for p in &s.window {
                b.extend(p.to_le_bytes());
            }
        }
        b
    }

    pub fn decode(mut b: &[u8]) -> Option<State> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (h, t) = (b.len() >= n).then(|| b.split_at(n))?;
            *b = t;
            Some(h)
        }
        let u32_of = |x: &[u8]| u32::from_le_bytes(x.try_into().unwrap());
        let n = u32_of(take(&mut b, 4)?);
        let mut st = State::default();
        for _ in 0..n {
            let sym = u32_of(take(&mut b, 4)?);
            let count = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
            let len = u32_of(take(&mut b, 4)?) as usize;
            if len > WINDOW {
                return None;
            }
            let mut window = VecDeque::with_capacity(WINDOW);
            for _ in 0..len {
                window.push_back(f64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap()));
            }
            st.symbols.insert(sym, Symbol { count, window });
        }
        Some(st)
    }
}

/// The tick generator: a random walk per symbol in cents, with an occasional spike.
pub struct Generator {
    rng: u64,
    cents: Vec<i64>,
    seq: Vec<u64>,
}

impl Generator {
    pub fn new(symbols: u32, seed: u64) -> Generator {
        let mut g = Generator {
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            cents: Vec::new(),
            seq: vec![0; symbols as usize],
        };
        g.cents = (0..symbols)
            .map(|_| 5_000 + (g.next() % 20_000) as i64)
            .collect();
        g
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn tick(&mut self) -> Tick {
        let r = self.next();
        let symbol = (r % self.cents.len() as u64) as usize;
        let step = ((r >> 16) % 21) as i64 - 10;
        self.cents[symbol] = (self.cents[symbol] + step).max(100);
        let mut cents = self.cents[symbol];
        if (r >> 40).is_multiple_of(1000) {
            // A spike: 20% off the walk, for this tick only.
            cents += cents / 5 * if (r >> 50) & 1 == 0 { 1 } else { -1 };
        }
        let seq = self.seq[symbol];
        self.seq[symbol] += 1;
        Tick {
            symbol: symbol as u32,
            seq,
            price: cents as f64 / 100.0,
        }
    }
}
