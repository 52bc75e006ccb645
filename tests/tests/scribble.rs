//! Shared memory is untrusted input. While a producer process and a consumer process use a
//! channel, this test maps the segment a second time and scribbles over the header, the cursor
//! lines, the participant table and the records: random bytes, and values crafted to look
//! plausible (valid record headers with wild lengths, cursors nudged back and forth, slot
//! sequences from other laps). The victims' calls may fail with `Corrupted` (or time out, or
//! deliver garbage frames), but no victim may panic, crash, or stay in a call past its timeout
//! (each runs a watchdog thread that exits non-zero if a 5 ms call lasts 2 s).

use shmring::{ChannelConfig, layout};
use shmring_tests::{Rng, Watchdog, field, serial, unique_name};
use std::process::Command;
use std::time::{Duration, Instant};

/// A second, independent mapping of a segment's object.
struct RawMap {
    ptr: *mut u8,
    len: usize,
}

impl RawMap {
    fn open(name: &str) -> RawMap {
        let path = format!("/dev/shm/shmring-{name}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = file.metadata().unwrap().len() as usize;
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap {path}");
        RawMap {
            ptr: ptr.cast(),
            len,
        }
    }

    fn read_u64(&self, off: usize) -> u64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: in bounds and aligned (asserted); the bytes are shared with the victims on
        // purpose, hence volatile.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
    }

    fn write_u64(&self, off: usize, v: u64) {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: as in read_u64.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u64>(), v) }
    }

    fn write_u8(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: in bounds (asserted).
        unsafe { std::ptr::write_volatile(self.ptr.add(off), v) }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One scribble: picks an area and writes something nasty there.
fn scribble(map: &RawMap, geo: &shmring::Geometry, rng: &mut Rng) {
    let area = rng.below(100);
    let (start, end) = match area {
        0..=9 => (0, layout::HEADER_SIZE),
        10..=39 => (layout::PRODUCER_LINE, layout::PARTICIPANTS),
        40..=49 => (layout::PARTICIPANTS, geo.data),
        _ => (geo.data, geo.data + geo.data_len),
    };
    let off = (start + rng.below((end - start) as u64) as usize) & !7;
    let old = map.read_u64(off);
    let v = match rng.below(8) {
        0 => rng.next_u64(),
        1 => 0,
        2 => u64::MAX,
        3 => old.wrapping_add(rng.below(256)),
        4 => old.wrapping_sub(rng.below(256)),
        // A plausible record header: a known type, a lap tag, a wild length.
        5 => {
            let ty = [
                layout::RecordType::Data,
                layout::RecordType::Padding,
                layout::RecordType::Skip,
            ][rng.below(3) as usize];
            layout::encode_header(
                rng.next_u64() as u32 >> rng.below(32),
                ty,
                0,
                rng.next_u64() as u16,
            )
        }
        6 => old ^ (1 << rng.below(64)),
        _ => {
            for i in 0..8 {
                map.write_u8(off + i, rng.next_u64() as u8);
            }
            return;
        }
    };
    map.write_u64(off, v);
}

fn torture(cfg: ChannelConfig) {
    let _serial = serial();
    let dog = Watchdog::new("scribble", Duration::from_secs(120));
    let name = unique_name("scribble");
    let seg = dog.segment(&name, &cfg);
    let geo = *seg.seg.geometry();
    const MILLIS: u64 = 2500;
    let peer = || Command::new(env!("CARGO_BIN_EXE_shmring-peer"));
    let mut consumer = dog.spawn(peer().args(["victim", &name, "consumer", &MILLIS.to_string()]));
    let mut producer = dog.spawn(peer().args(["victim", &name, "producer", &MILLIS.to_string()]));
    consumer.expect_line("ready");
    producer.expect_line("ready");
    // Let them exchange frames unharmed for a moment, then scribble in bursts.
    std::thread::sleep(Duration::from_millis(100));
    let map = RawMap::open(&name);
    let mut rng = Rng::new(0x5C81_BB1E);
    let end = Instant::now() + Duration::from_millis(MILLIS - 300);
    let mut writes = 0u64;
    while Instant::now() < end {
        for _ in 0..(1 + rng.below(20)) {
            scribble(&map, &geo, &mut rng);
            writes += 1;
        }
        std::thread::sleep(Duration::from_micros(200 + rng.below(2000)));
    }
    let outs = [producer.success(), consumer.success()];
    dog.check();
    let total = |k: &str| outs.iter().map(|o| field(o, k).unwrap_or(0)).sum::<u64>();
    eprintln!(
        "{:?}: {writes} scribbles; producer: {}; consumer: {}",
        geo.kind,
        outs[0].trim(),
        outs[1].trim()
    );
    assert!(
        total("ok") > 0,
        "the victims never got anything done: {outs:?}"
    );
    assert!(
        total("corrupted") > 0,
        "no scribble was ever detected: {outs:?}"
    );
    for o in &outs {
        assert!(field(o, "max_call_us").is_some(), "{o}");
    }
}

#[test]
fn spsc_survives_scribbling() {
    torture(ChannelConfig::spsc().capacity(8192).max_frame_size(1024));
}

#[test]
fn mpmc_survives_scribbling() {
    torture(ChannelConfig::mpmc().capacity(16 * 256).max_frame_size(256));
}
