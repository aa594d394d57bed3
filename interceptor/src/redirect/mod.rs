//! Loading, attaching and pinning the eBPF programs, writing the rule tables
//! they read, and looking up where a redirected connection was going.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/interceptor`):
//!
//! ```text
//! maps/IC_CONFIG, maps/IC_INTERCEPT, ...   the maps (shared by every program instance)
//! links/<cgroup id>/connect4|connect6|sock_ops   one bpf_link per program and cgroup
//! ```
//!
//! Links are pinned, so an attachment outlives the daemon: while the daemon
//! is down the programs keep rewriting intercepted connects to the proxy
//! port, where nothing listens, and those connects fail (fail closed). A
//! restarted daemon re-attaches fresh program instances and atomically
//! renames their pins over the old ones, so upgrades take effect without a
//! window in which the cgroup is unattached.

pub mod bpffs;
pub mod cgroup;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use interceptor_common::{
    Config as BpfConfig, Origin, RuleKey, RuleValue, TupleKey, counters, maps, programs,
};
use policy::{EgressAllow, InterceptRule};
use thiserror::Error;

pub use cgroup::{Cgroup2, CgroupError};

/// The eBPF object built from `interceptor-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

const LINK_NAMES: [&str; 3] = ["connect4", "connect6", "sock_ops"];

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error(
        "permission denied loading eBPF programs: run the daemon as root (it needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON), e.g. through systemd/interceptor.service"
    )]
    NotPermitted,
    #[error(
        "this kernel cannot attach cgroup socket programs ({0}); it needs CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and kernel >= 5.7"
    )]
    Unsupported(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("updating eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching to cgroup {cgroup}: {message}")]
    Attach { cgroup: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
}

/// Where the daemon listens and how its own sockets are marked.
#[derive(Debug, Clone)]
pub struct RedirectOptions {
    pub pin_dir: PathBuf,
    pub proxy_port: u16,
    pub socket_mark: u32,
}

/// A cgroup with the programs attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: u64,
    pub path: String,
}

/// Counters kept by the kernel programs (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelCounters {
    pub redirected: u64,
    pub egress_denied: u64,
    pub passed: u64,
    pub origin_store_failed: u64,
    pub rekeyed: u64,
}

/// Shared handle for looking up (and consuming) the origin of an accepted
/// connection.
#[derive(Clone)]
pub struct OriginTable {
    map: Arc<Mutex<HashMap<MapData, TupleKey, Origin>>>,
}

impl OriginTable {
    /// The origin of a connection the proxy accepted from `peer` on `local`,
    /// removed from the table so it cannot be used twice.
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
        let key = TupleKey {
            src_addr: mapped(peer.ip()),
            src_port: peer.port(),
            dst_port: local.port(),
        };
        let mut map = self.map.lock().ok()?;
        let origin = map.get(&key, 0).ok()?;
        // Best effort: the entry is LRU anyway.
        let _ = map.remove(&key);
        Some(origin)
    }
}

/// An address in the 16-byte form the kernel side uses (v4 → v4-mapped).
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => interceptor_common::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address an origin refers to, unmapped back to IPv4 when it is one.
pub fn origin_addr(origin: &Origin) -> SocketAddr {
    let v6 = std::net::Ipv6Addr::from(origin.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, origin.port)
}

pub struct Redirector {
    ebpf: Ebpf,
    opts: RedirectOptions,
    cgroup: Cgroup2,
    attached: BTreeMap<u64, Attached>,
    origins: OriginTable,
}

impl Redirector {
    /// Loads the programs (reusing maps pinned by an earlier run) without
    /// attaching them anywhere yet.
    pub fn load(opts: RedirectOptions, cgroup: Cgroup2) -> Result<Redirector, RedirectError> {
        bpffs::ensure(&opts.pin_dir)?;
        let maps_dir = opts.pin_dir.join("maps");
        let links_dir = opts.pin_dir.join("links");
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(|source| RedirectError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)
            .map_err(classify_load_error)?;
        {
            let p: &mut CgroupSockAddr = program_mut(&mut ebpf, programs::CONNECT4)?;
            p.load().map_err(|e| classify_load_error(e.into()))?;
            let p: &mut CgroupSockAddr = program_mut(&mut ebpf, programs::CONNECT6)?;
            p.load().map_err(|e| classify_load_error(e.into()))?;
            let p: &mut SockOps = program_mut(&mut ebpf, programs::SOCK_OPS)?;
            p.load().map_err(|e| classify_load_error(e.into()))?;
        }
        let tuple_map = ebpf
            .take_map(maps::ORIGIN_BY_TUPLE)
            .ok_or(RedirectError::MissingMap(maps::ORIGIN_BY_TUPLE))?;
        let tuple_map: HashMap<MapData, TupleKey, Origin> =
            HashMap::try_from(tuple_map).map_err(|source| RedirectError::Map {
                map: maps::ORIGIN_BY_TUPLE,
                source,
            })?;
        Ok(Redirector {
            ebpf,
            opts,
            cgroup,
            attached: BTreeMap::new(),
            origins: OriginTable {
                map: Arc::new(Mutex::new(tuple_map)),
            },
        })
    }

    /// Takes the aya-log ring buffer so the daemon can forward kernel log
    /// lines to tracing.
    pub fn take_logger(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    pub fn cgroup(&self) -> &Cgroup2 {
        &self.cgroup
    }

    pub fn origins(&self) -> OriginTable {
        self.origins.clone()
    }

    pub fn attached(&self) -> impl Iterator<Item = &Attached> {
        self.attached.values()
    }

    /// Writes the config entry and the rule tables from the policy.
    /// `proxy_port` 0 makes every intercepted connect fail (used until the
    /// listener is bound).
    pub fn apply_rules(
        &mut self,
        intercepts: &[InterceptRule],
        egress_allow: &[EgressAllow],
        egress_deny: bool,
        proxy_port: u16,
    ) -> Result<(), RedirectError> {
        let mut want_intercept = BTreeMap::new();
        for (i, r) in intercepts.iter().enumerate() {
            let (prefix, addr) = net_prefix(r.net.as_ref());
            let key = (
                16 + prefix,
                RuleKey {
                    port: r.port.to_be_bytes(),
                    addr,
                },
            );
            // The first rule for a destination wins, as in the file.
            want_intercept.entry(key_bytes(&key)).or_insert((
                key,
                RuleValue {
                    protocol: r.protocol.id(),
                    _pad: 0,
                    rule_index: i as u16,
                },
            ));
        }
        let mut want_allow = BTreeMap::new();
        for (i, r) in egress_allow.iter().enumerate() {
            let (prefix, addr) = net_prefix(r.net.as_ref());
            let port = r.port.unwrap_or(0);
            let key = (
                16 + prefix,
                RuleKey {
                    port: port.to_be_bytes(),
                    addr,
                },
            );
            want_allow.entry(key_bytes(&key)).or_insert((
                key,
                RuleValue {
                    protocol: 0,
                    _pad: 0,
                    rule_index: i as u16,
                },
            ));
        }
        sync_trie(&mut self.ebpf, maps::INTERCEPT, &want_intercept)?;
        sync_trie(&mut self.ebpf, maps::EGRESS_ALLOW, &want_allow)?;
        let cfg = BpfConfig {
            proxy_port,
            egress_deny: u8::from(egress_deny),
            _pad: 0,
            mark: self.opts.socket_mark,
        };
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or(RedirectError::MissingMap(maps::CONFIG))?;
        let mut arr: Array<&mut MapData, BpfConfig> =
            Array::try_from(map).map_err(|source| RedirectError::Map {
                map: maps::CONFIG,
                source,
            })?;
        arr.set(0, cfg, 0).map_err(|source| RedirectError::Map {
            map: maps::CONFIG,
            source,
        })?;
        Ok(())
    }

    /// Attaches the three programs to a cgroup (a path relative to the
    /// cgroup2 root) and pins the links. Attaching an already attached
    /// cgroup replaces its links atomically.
    pub fn attach(&mut self, path: &str) -> Result<Attached, RedirectError> {
        let id = self.cgroup.id_of(path)?;
        let dir = self.cgroup.dir(path);
        let fd = File::open(&dir).map_err(|source| RedirectError::Io {
            path: dir.clone(),
            source,
        })?;
        let link_dir = self.link_dir(id);
        std::fs::create_dir_all(&link_dir).map_err(|source| RedirectError::Io {
            path: link_dir.clone(),
            source,
        })?;
        let attach_err = |e: &dyn std::error::Error| RedirectError::Attach {
            cgroup: path.to_string(),
            message: error_chain(e),
        };
        let mut fresh: Vec<(&str, FdLink)> = Vec::with_capacity(3);
        for (name, prog) in [
            ("connect4", programs::CONNECT4),
            ("connect6", programs::CONNECT6),
        ] {
            let p: &mut CgroupSockAddr = program_mut(&mut self.ebpf, prog)?;
            let link_id = p
                .attach(&fd, CgroupAttachMode::Single)
                .map_err(|e| classify_attach_error(path, e))?;
            let link = p.take_link(link_id).map_err(|e| attach_err(&e))?;
            fresh.push((name, FdLink::try_from(link).map_err(|e| attach_err(&e))?));
        }
        let p: &mut SockOps = program_mut(&mut self.ebpf, programs::SOCK_OPS)?;
        let link_id = p
            .attach(&fd, CgroupAttachMode::Single)
            .map_err(|e| classify_attach_error(path, e))?;
        let link = p.take_link(link_id).map_err(|e| attach_err(&e))?;
        fresh.push((
            "sock_ops",
            FdLink::try_from(link).map_err(|e| attach_err(&e))?,
        ));

        // Pin under a temporary name, then rename over any previous pin: the
        // cgroup is never without a redirecting program.
        for (name, link) in fresh {
            let tmp = link_dir.join(format!("{name}_new")); // bpffs names cannot contain dots
            let _ = std::fs::remove_file(&tmp);
            let pinned = link.pin(&tmp).map_err(|e| attach_err(&e))?;
            let dst = link_dir.join(name);
            std::fs::rename(&tmp, &dst).map_err(|source| RedirectError::Io {
                path: dst.clone(),
                source,
            })?;
            // The pin keeps the link alive; our fd is no longer needed.
            drop(pinned);
        }
        let a = Attached {
            id,
            path: path.to_string(),
        };
        self.attached.insert(id, a.clone());
        Ok(a)
    }

    /// Removes a cgroup's links: its processes are no longer intercepted.
    pub fn detach(&mut self, id: u64) -> Result<Option<Attached>, RedirectError> {
        let dir = self.link_dir(id);
        if dir.exists() {
            for name in LINK_NAMES {
                for f in [dir.join(name), dir.join(format!("{name}_new"))] {
                    match std::fs::remove_file(&f) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => return Err(RedirectError::Io { path: f, source }),
                    }
                }
            }
            std::fs::remove_dir(&dir).map_err(|source| RedirectError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(self.attached.remove(&id))
    }

    /// Cgroup ids that have pinned links (from this or an earlier run).
    pub fn pinned_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.opts.pin_dir.join("links")) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    pub fn counters(&self) -> KernelCounters {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else {
            return KernelCounters::default();
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return KernelCounters::default();
        };
        let sum = |i: u32| -> u64 { arr.get(&i, 0).map(|v| v.iter().copied().sum()).unwrap_or(0) };
        KernelCounters {
            redirected: sum(counters::REDIRECTED),
            egress_denied: sum(counters::EGRESS_DENIED),
            passed: sum(counters::PASSED),
            origin_store_failed: sum(counters::ORIGIN_STORE_FAILED),
            rekeyed: sum(counters::REKEYED),
        }
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.opts.pin_dir.join("links").join(id.to_string())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(RedirectError::MissingProgram(name))?;
    p.try_into()
        .map_err(|_| RedirectError::MissingProgram(name))
}

/// Prefix length (in bits of the 16-byte address) and address of a rule's
/// network; no network = any address.
fn net_prefix(net: Option<&policy::IpNet>) -> (u32, [u8; 16]) {
    match net {
        None => (0, [0; 16]),
        Some(n) => match n.addr() {
            IpAddr::V4(v4) => (
                96 + u32::from(n.prefix_len()),
                interceptor_common::v4_mapped(v4.octets()),
            ),
            IpAddr::V6(v6) => (u32::from(n.prefix_len()), v6.octets()),
        },
    }
}

fn key_bytes(k: &(u32, RuleKey)) -> (u32, [u8; 2], [u8; 16]) {
    (k.0, k.1.port, k.1.addr)
}

type WantedRules = BTreeMap<(u32, [u8; 2], [u8; 16]), ((u32, RuleKey), RuleValue)>;

/// Makes an LPM trie hold exactly `want`: inserts first, then removes stale
/// keys, so a rule present before and after never disappears in between.
fn sync_trie(ebpf: &mut Ebpf, name: &'static str, want: &WantedRules) -> Result<(), RedirectError> {
    let map = ebpf.map_mut(name).ok_or(RedirectError::MissingMap(name))?;
    let mut trie: LpmTrie<&mut MapData, RuleKey, RuleValue> =
        LpmTrie::try_from(map).map_err(|source| RedirectError::Map { map: name, source })?;
    for ((prefix, key), value) in want.values() {
        trie.insert(&Key::new(*prefix, *key), *value, 0)
            .map_err(|source| RedirectError::Map { map: name, source })?;
    }
    let existing: Vec<Key<RuleKey>> = trie.keys().filter_map(Result::ok).collect();
    for k in existing {
        let id = (k.prefix_len(), k.data().port, k.data().addr);
        if !want.contains_key(&id) {
            trie.remove(&k)
                .map_err(|source| RedirectError::Map { map: name, source })?;
        }
    }
    Ok(())
}

fn classify_load_error(e: aya::EbpfError) -> RedirectError {
    let text = error_chain(&e);
    if text.contains("Operation not permitted") || text.contains("os error 1)") {
        RedirectError::NotPermitted
    } else if text.contains("Function not implemented") || text.contains("os error 38") {
        RedirectError::Unsupported(text)
    } else {
        RedirectError::Load(text)
    }
}

fn classify_attach_error(cgroup: &str, e: aya::programs::ProgramError) -> RedirectError {
    let text = error_chain(&e);
    if text.contains("Operation not permitted") {
        RedirectError::NotPermitted
    } else if text.contains("Invalid argument") || text.contains("not supported") {
        RedirectError::Unsupported(text)
    } else {
        RedirectError::Attach {
            cgroup: cgroup.to_string(),
            message: text,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trip() {
        let o = Origin {
            addr: mapped("10.1.2.3".parse().unwrap()),
            port: 5432,
            protocol: 1,
            family: 4,
            tgid: 1,
            uid: 0,
            rule_index: 0,
            _pad: 0,
            cgroup_id: 1,
            comm: [0; 16],
        };
        assert_eq!(origin_addr(&o), "10.1.2.3:5432".parse().unwrap());
        let o6 = Origin {
            addr: mapped("::1".parse().unwrap()),
            ..o
        };
        assert_eq!(origin_addr(&o6), "[::1]:5432".parse().unwrap());
    }

    #[test]
    fn prefixes() {
        assert_eq!(net_prefix(None).0, 0);
        let n: policy::IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(net_prefix(Some(&n)).0, 104);
        let n: policy::IpNet = "fd00::/8".parse().unwrap();
        assert_eq!(net_prefix(Some(&n)).0, 8);
    }
}
