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
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const CONNECT4: &str = "ic_connect4";
    pub const CONNECT6: &str = "ic_connect6";
    pub const SOCK_OPS: &str = "ic_sock_ops";
}

/// Capacity of the LRU origin maps. An entry lives from `connect()` until the
/// proxy has accepted the connection (microseconds to a few milliseconds), so
/// this bounds the number of connects that can be in flight at once.
pub const ORIGIN_MAP_SIZE: u32 = 65_536;
/// Capacity of each rule trie.
pub const RULE_MAP_SIZE: u32 = 1_024;

/// The single entry of the `IC_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Port of the proxy listener on 127.0.0.1 and ::1 (host byte order).
    /// 0 means "not configured": intercepted connects are refused (fail closed).
    pub proxy_port: u16,
    /// 1 when connects matching neither an intercept nor an allow rule must
    /// fail with EPERM.
    pub egress_deny: u8,
    pub _pad: u8,
    /// SO_MARK carried by the daemon's own sockets; such sockets are never
    /// redirected or refused. 0 disables the check.
    pub mark: u32,
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
}

/// Key of an origin once the connection has a source port: the client side
/// of the connection as the proxy sees it from `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// Client (source) address, IPv4 stored IPv4-mapped.
    pub src_addr: [u8; 16],
    /// Client port (host byte order).
    pub src_port: u16,
    /// Proxy port (host byte order).
    pub dst_port: u16,
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
    pub const COUNT: u32 = 5;
}

/// Maps an IPv4 address (octets in network order) to its IPv4-mapped IPv6 form.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

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
