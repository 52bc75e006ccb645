//! The one place atomics come from.
//!
//! The rings use [`AtomicU64`] and [`AtomicU32`] from here: thin `#[repr(transparent)]` wrappers
//! over `std`'s atomics, or over [loom]'s when the crate is built with `RUSTFLAGS="--cfg loom"`
//! (the pattern of tokio's `src/loom/mod.rs` and crossbeam's `cfg(crossbeam_loom)`). Being
//! distinct types, they let `core/clippy.toml` forbid `std::sync::atomic` types everywhere else
//! in the crate, so no atomic escapes the model checker by accident. The wrappers have the
//! layout of `u64`/`u32`, which is what the shared-memory layout relies on.
//!
//! [loom]: https://docs.rs/loom

// The one module allowed to name the std/loom atomic types.
#![allow(clippy::disallowed_types)]

#[cfg(loom)]
use loom::sync::atomic as imp;
#[cfg(not(loom))]
use std::sync::atomic as imp;

pub(crate) use imp::{Ordering, fence};

/// Marks a point between SeqCst accesses whose single total order a protocol relies on (the
/// MPMC resize handshake, `mpmc::drained_for_good`). In the C++ memory model, which Rust's
/// atomics follow, the SeqCst accesses give that order by themselves, at no cost on x86 (a
/// SeqCst load is a plain load there; the store and the compare-and-swap are locked anyway),
/// so this is nothing. Loom regards SeqCst loads and stores as AcqRel (tokio-rs/loom#180) and
/// models only SeqCst fences: under loom it is a SeqCst fence, which gives the models the
/// order the code has.
#[inline(always)]
pub(crate) fn seqcst_order() {
    #[cfg(loom)]
    imp::fence(Ordering::SeqCst);
}

macro_rules! atomic {
    ($name:ident, $int:ty) => {
        #[doc = concat!("A `", stringify!($int), "` accessed atomically; see the module docs.")]
        #[repr(transparent)]
        pub struct $name(imp::$name);

        #[allow(dead_code)]
        impl $name {
            /// A new atomic holding `v`.
            #[cfg(not(loom))]
            pub(crate) const fn new(v: $int) -> Self {
                Self(imp::$name::new(v))
            }

            /// A new atomic holding `v`.
            #[cfg(loom)]
            pub(crate) fn new(v: $int) -> Self {
                Self(imp::$name::new(v))
            }

            #[inline(always)]
            pub(crate) fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }

            #[inline(always)]
            pub(crate) fn store(&self, v: $int, order: Ordering) {
                self.0.store(v, order)
            }

            #[inline(always)]
            pub(crate) fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_add(v, order)
            }

            #[inline(always)]
            pub(crate) fn swap(&self, v: $int, order: Ordering) -> $int {
                self.0.swap(v, order)
            }

            #[inline(always)]
            pub(crate) fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_sub(v, order)
            }

            #[inline(always)]
            pub(crate) fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange(current, new, success, failure)
            }

            #[inline(always)]
            pub(crate) fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange_weak(current, new, success, failure)
            }

            /// The address of the value, for the futex system call.
            #[inline(always)]
            pub(crate) fn as_ptr(&self) -> *const $int {
                self as *const Self as *const $int
            }
        }
    };
}

atomic!(AtomicU64, u64);
atomic!(AtomicU32, u32);

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
};

/// A compiler-only barrier: keeps the compiler from moving memory accesses across it, emits no
/// instruction. Used between a publish and the waiter check when the process relies on
/// `membarrier` for the hardware half of the fence (see `wait.rs`). loom models no compiler
/// reordering, so it is a no-op there.
#[inline(always)]
pub(crate) fn compiler_fence() {
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// A hint inside spin loops (`pause` on x86). Under loom it yields so the model can schedule
/// the thread being waited for.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
