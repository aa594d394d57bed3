//! `#[repr(C)]` types shared by the kernel programs (`interceptor-ebpf`) and
//! the daemon (`interceptor`).
//!
//! Every type here is plain old data: fixed size, no padding surprises, no
//! pointers. Addresses are always stored as 16 bytes in IPv6 form; an IPv4
//! address `a.b.c.d` is stored IPv4-mapped (`::ffff:a.b.c.d`) so that one key
//! layout serves both families and a v4-mapped connect on an IPv6 socket looks
//! exactly like the plain IPv4 connect it is on the wire.
#![no_std]

/// Names of the maps, as declared in the eBPF object and pinned under
/// `<pin dir>/maps/`.
pub mod maps {
    pub const CONFIG: &str = "IC_CONFIG";
    pub const INTERCEPT: &str = "IC_INTERCEPT";
    pub const EGRESS_ALLOW: &str = "IC_EGRESS_ALLOW";
    pub const ORIGIN_BY_COOKIE: &str = "IC_ORIGIN_COOKIE";
    pub const ORIGIN_BY_TUPLE: &str = "IC_ORIGIN_TUPLE";
    pub const COUNTERS: &str = "IC_COUNTERS";
    pub const UIDS: &str = "IC_UIDS";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const CONNECT4: &str = "ic_connect4";
    pub const CONNECT6: &str = "ic_connect6";
    pub const SOCK_OPS: &str = "ic_sock_ops";
    /// Variants attached to the cgroup2 root for `attach --uid`: they act
    /// only on connects whose caller's real uid is in `IC_UIDS`.
    pub const CONNECT4_UID: &str = "ic_connect4_uid";
    pub const CONNECT6_UID: &str = "ic_connect6_uid";
}

/// Capacity of the LRU origin maps. An entry lives from `connect()` until the
/// proxy has accepted the connection (microseconds to a few milliseconds), so
/// this bounds the number of connects that can be in flight at once.
pub const ORIGIN_MAP_SIZE: u32 = 65_536;
/// Capacity of each rule trie.
pub const RULE_MAP_SIZE: u32 = 1_024;
/// Capacity of the attached-uid table.
pub const UID_MAP_SIZE: u32 = 1_024;

/// The single entry of the `IC_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Port of the proxy listener on 127.0.0.1 and ::1 (host byte order).
    /// Connects from attached processes to this port on a loopback or
    /// unspecified address are refused unless the programs redirected them.
    pub proxy_port: u16,
    /// 1 when connects matching neither an intercept nor an allow rule must
    /// fail with EPERM.
    pub egress_deny: u8,
    /// 1 once the proxy listens; until then intercepted connects are refused
    /// (fail closed).
    pub ready: u8,
    /// SO_MARK carried by the daemon's own sockets. A socket is the daemon's
    /// own (never redirected or refused) only when it carries this mark AND
    /// the connecting process is `daemon_tgid`. 0 disables the skip.
    pub mark: u32,
    /// Process id (init pid namespace) of the running daemon.
    pub daemon_tgid: u32,
    /// Changes at every daemon start; stamped into each origin so that
    /// userspace never serves an origin written for an earlier run.
    pub generation: u32,
    /// Cookie of the daemon's network namespace. Intercepted connects from
    /// any other namespace are refused (the proxy is not reachable there).
    pub netns_cookie: u64,
}

/// Data part of an LPM-trie key: destination port (network byte order) then
/// the destination address. The port comes first, so a key's prefix length is
/// `16 + address prefix bits` (+96 for IPv4 rules, which live in the mapped
/// range). Port 0 is the wildcard port ("any port") for allow rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Value of an intercept or allow rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// Protocol id (see `policy::Protocol::id`); 0 for allow rules.
    pub protocol: u8,
    pub _pad: u8,
    /// Index of the rule in the policy file, for diagnostics.
    pub rule_index: u16,
}

/// Where an intercepted connection was going and who opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Original destination address (IPv4 stored IPv4-mapped).
    pub addr: [u8; 16],
    /// Original destination port (host byte order).
    pub port: u16,
    /// Protocol id of the matching intercept rule.
    pub protocol: u8,
    /// 4 or 6: the address family the client used (6 includes v4-mapped on an
    /// IPv6 socket).
    pub family: u8,
    pub tgid: u32,
    pub uid: u32,
    pub rule_index: u16,
    pub _pad: u16,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at connect time.
    pub created_ns: u64,
    /// Network namespace cookie of the connecting socket.
    pub netns: u64,
    /// `Config::generation` at connect time.
    pub generation: u32,
    pub _pad2: u32,
}

/// Key of an origin once the connection has a source port: the client side
/// of the connection as the proxy sees it from `accept()`, in the network
/// namespace it was made in (the same 4-tuple can exist in two namespaces).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// Client (source) address, IPv4 stored IPv4-mapped.
    pub src_addr: [u8; 16],
    /// Client port (host byte order).
    pub src_port: u16,
    /// Proxy port (host byte order).
    pub dst_port: u16,
    /// Always 0 (hash keys compare every byte).
    pub _pad: u32,
    /// Network namespace cookie of the connection.
    pub netns: u64,
}

/// Indexes into the per-CPU `IC_COUNTERS` array.
pub mod counters {
    /// Connects redirected to the proxy.
    pub const REDIRECTED: u32 = 0;
    /// Connects refused by `egress = "deny"`.
    pub const EGRESS_DENIED: u32 = 1;
    /// Connects that went direct (matched an allow rule or egress allow).
    pub const PASSED: u32 = 2;
    /// Redirects whose origin could not be stored (map full): refused.
    pub const ORIGIN_STORE_FAILED: u32 = 3;
    /// Connections re-keyed by 4-tuple in sock_ops.
    pub const REKEYED: u32 = 4;
    /// Direct connects from attached processes to the proxy port: refused.
    pub const DIRECT_REFUSED: u32 = 5;
    /// Intercepted connects from another network namespace: refused.
    pub const NETNS_REFUSED: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Maps an IPv4 address (octets in network order) to its IPv4-mapped IPv6 form.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

// The layouts are part of the pinned maps' contract: a change makes the
// daemon replace the pins (see the daemon's redirect module). No implicit
// padding anywhere: every byte of a key is written.
const _: () = assert!(core::mem::size_of::<Config>() == 24);
const _: () = assert!(core::mem::size_of::<Origin>() == 80);
const _: () = assert!(core::mem::size_of::<TupleKey>() == 32);
const _: () = assert!(core::mem::size_of::<RuleKey>() == 18);
const _: () = assert!(core::mem::size_of::<RuleValue>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are #[repr(C)], contain only integers and byte arrays,
    // and have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::TupleKey {}
}
