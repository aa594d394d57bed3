//! Builds the eBPF object (`interceptor-ebpf`) with the nightly toolchain and
//! bpf-linker, and places it in OUT_DIR where `src/redirect/` embeds it.
//! `cargo xtask setup` installs what this needs.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("interceptor crate has no parent directory"))?;
    let ebpf_dir = root.join("interceptor-ebpf");
    let common_dir = root.join("interceptor-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "interceptor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
