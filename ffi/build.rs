//! Generates the C header from the crate's source with cbindgen, into `OUT_DIR/shmring.h`.
//! `include/shmring.h` is the committed copy; `tests/header.rs` fails if they differ.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("ffi/cbindgen.toml is readable");
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads ffi/src")
        .write_to_file(format!("{out}/shmring.h"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
}
