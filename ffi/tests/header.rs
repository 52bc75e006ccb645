//! `include/shmring.h` is what cbindgen generates from this crate's source (build.rs writes it
//! into OUT_DIR). Run with `SHMRING_BLESS=1` to update the committed copy after changing the
//! ABI.

#[test]
fn committed_header_is_current() {
    let generated = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/shmring.h"))
        .expect("build.rs generated the header");
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/shmring.h");
    if std::env::var_os("SHMRING_BLESS").is_some() {
        std::fs::write(committed_path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/shmring.h differs from what cbindgen generates (first at line {}): \
             run `SHMRING_BLESS=1 cargo test -p shmring-ffi --test header` and commit it",
            line + 1
        );
    }
}
