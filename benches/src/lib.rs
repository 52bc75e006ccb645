//! criterion benchmarks of shmring (see the `benches` targets).
