//! Making sure the pin directory lives on a BPF filesystem.

use std::path::{Path, PathBuf};

use thiserror::Error;

const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error(
        "{0} is not on a BPF filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or set daemon.bpf_pin_dir below an existing bpffs mount"
    )]
    NotBpffs(PathBuf),
    #[error(
        "mounting bpffs at {path} failed: {source} (the daemon needs CAP_SYS_ADMIN, or mount it beforehand)"
    )]
    Mount { path: PathBuf, source: nix::Error },
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Checks that `pin_dir` is (or will be created) on bpffs. When it is below
/// `/sys/fs/bpf` and nothing is mounted there yet (hosts without systemd),
/// mounts bpffs at `/sys/fs/bpf`, as systemd would at boot.
pub fn ensure(pin_dir: &Path) -> Result<(), BpffsError> {
    // The nearest existing ancestor tells which filesystem the dir is on.
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if pin_dir.starts_with(default) && default.is_dir() && !is_bpffs(default) {
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|source| BpffsError::Mount {
            path: default.into(),
            source,
        })?;
        tracing::info!(path = DEFAULT_BPFFS, "mounted bpffs");
        return Ok(());
    }
    Err(BpffsError::NotBpffs(pin_dir.to_path_buf()))
}
