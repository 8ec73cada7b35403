//! Embeds the XDP object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs nightly and bpf-linker, so it is not built from here:
//! plain `cargo build`/`clippy`/`test` of the workspace must work on stable.
//! When no object is found an empty one is embedded, and `xban run` refuses to
//! start with the command that builds it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=XBAN_EBPF_OBJ");
    // Set by xtask to a digest of the object: reruns this script when the
    // content changes even if the mtime went back (see xtask's tasks.rs).
    println!("cargo:rerun-if-env-changed=XBAN_EBPF_DIGEST");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpfel-unknown-none/release/xban-xdp");
    let source = std::env::var_os("XBAN_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("xban-xdp.o");
    let bytes = std::fs::read(&source).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no XDP object at {}: `xban run` will need a binary built by `cargo xtask build`",
            source.display()
        );
    }
    // The object's digest, for the restore marker (a warm start adopts the
    // pinned program only if this binary carries the object it came from):
    // FNV-1a, computed here once instead of at every start and stop.
    let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    println!("cargo:rustc-env=XBAN_XDP_OBJECT_DIGEST={digest}");
    std::fs::write(&out, bytes).expect("write embedded XDP object");
}
