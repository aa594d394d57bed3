//! Compiled `match` tables and their evaluation.

use crate::glob::Glob;
use crate::model::{Operation, Protocol, Target, Workload};
use crate::sql::{Action, ObjectKind, SqlStatement, StatementKind};
use ipnet::IpNet;
use regex::Regex;
use std::borrow::Cow;

/// OR over globs.
#[derive(Debug, Clone)]
pub(crate) struct GlobList(pub Vec<Glob>);

impl GlobList {
    fn any(&self, subject: &str) -> bool {
        self.0.iter().any(|g| g.is_match(subject))
    }
}

/// Matchers that only apply to SQL statements.
#[derive(Debug, Clone, Default)]
pub(crate) struct SqlMatcher {
    pub statement: Option<Vec<StatementKind>>,
    pub object: Option<Vec<ObjectKind>>,
    pub action: Option<Vec<Action>>,
    pub tables: Option<GlobList>,
    pub functions: Option<GlobList>,
    pub columns: Option<GlobList>,
    /// Whether `columns` also matches statements that may touch columns
    /// they do not name (`SqlStatement::all_columns`): set for `deny` and
    /// `review` rules, so `SELECT *` cannot slip past them, and not for
    /// `allow` rules, so it cannot slip through them.
    pub columns_unnamed: bool,
    pub has_where: Option<bool>,
}

/// Matchers that only apply to SSH commands.
#[derive(Debug, Clone, Default)]
pub(crate) struct SshMatcher {
    pub command: Option<GlobList>,
    pub command_regex: Option<Vec<Regex>>,
}

/// Matchers that only apply to HTTP requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpMatcher {
    /// Upper-case method names.
    pub method: Option<Vec<String>>,
    pub host: Option<GlobList>,
    pub path: Option<GlobList>,
}

/// A compiled `match` table: every present key must match (AND); inside a
/// key, any listed value may match (OR).
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    pub protocol: Option<Vec<Protocol>>,
    pub cgroup: Option<GlobList>,
    pub unit: Option<GlobList>,
    pub exe: Option<GlobList>,
    pub comm: Option<GlobList>,
    pub uid: Option<Vec<u32>>,
    pub identity: Vec<(String, GlobList)>,
    pub target_cidr: Option<Vec<IpNet>>,
    pub target_port: Option<Vec<u16>>,
    pub target_host: Option<GlobList>,
    pub target_database: Option<GlobList>,
    pub target_user: Option<GlobList>,
    pub sql: Option<SqlMatcher>,
    pub ssh: Option<SshMatcher>,
    pub http: Option<HttpMatcher>,
}

/// How a `match` table relates to a workload, target and operation.
///
/// Identity keys are three-valued: a workload without a verified identity
/// (never enrolled, revoked, expired) cannot be shown to match them, nor
/// shown not to. [`Applies::Unverified`] says "every other key matches, and
/// the identity keys could not be checked"; the caller decides what that
/// means (restrictive rules, masks and limits apply; allow rules do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applies {
    /// Some key does not match.
    No,
    /// Every key matches (identity keys, if any, against a verified identity).
    Yes,
    /// Every non-identity key matches; the table has `identity.*` keys and
    /// the workload has no verified identity.
    Unverified,
}

fn opt_glob(list: &Option<GlobList>, value: Option<&str>) -> bool {
    match list {
        None => true,
        Some(l) => value.is_some_and(|v| l.any(v)),
    }
}

/// The first table/function name a glob list matches, trying both the name
/// as written (`schema.table`) and its last part (`table`).
fn find_name<'a>(list: &GlobList, names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .find(|n| {
            list.any(n)
                || n.rsplit_once('.')
                    .is_some_and(|(_, bare)| !bare.is_empty() && list.any(bare))
        })
        .map(String::as_str)
}

/// Host names compare case-insensitively, without a trailing dot, a port
/// or IPv6 brackets: `API.Example.com.:443` → `api.example.com`,
/// `[::1]:8080` → `::1`.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let mut h = host.trim();
    if let Some(rest) = h.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            h = &rest[..end];
        }
    } else if let Some((name, port)) = h.rsplit_once(':') {
        // Only one colon: `name:port`. Several colons: a bare IPv6 address.
        if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) {
            h = name;
        }
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// The request path used for matching: query string and fragment removed,
/// percent-escapes decoded (when the result is UTF-8), `.`/`..` segments
/// resolved and repeated `/` collapsed, so `/a/../admin//x?y` is `/admin/x`.
pub(crate) fn normalize_path(path: &str) -> Cow<'_, str> {
    let p = path.split(['?', '#']).next().unwrap_or("");
    let needs_work = p.contains('%') || p.contains("//") || p.contains("/.") || !p.starts_with('/');
    if !needs_work && p.len() == path.len() {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode(p);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    Cow::Owned(out)
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(s),
    }
}

impl Matcher {
    /// Whether the rule can apply to operations of this shape at all
    /// (sql/ssh/http matchers restrict it to one kind of operation).
    fn op_matches(&self, op: &Operation<'_>) -> bool {
        if let Some(sql) = &self.sql {
            return match op {
                Operation::Sql(stmt) => sql.matches(stmt),
                _ => false,
            };
        }
        if let Some(ssh) = &self.ssh {
            return match op {
                Operation::SshCommand(cmd) => ssh.matches(cmd),
                _ => false,
            };
        }
        if let Some(http) = &self.http {
            return match op {
                Operation::Http { method, host, path } => http.matches(method, host, path),
                _ => false,
            };
        }
        true
    }

    /// Workload, identity, target and protocol keys only.
    pub(crate) fn context_match(&self, w: &Workload, t: &Target) -> Applies {
        let rest = self
            .protocol
            .as_ref()
            .is_none_or(|ps| ps.contains(&t.protocol))
            && self
                .target_port
                .as_ref()
                .is_none_or(|ps| ps.contains(&t.port))
            && self
                .uid
                .as_ref()
                .is_none_or(|uids| w.uid.is_some_and(|u| uids.contains(&u)))
            && self.target_cidr.as_ref().is_none_or(|nets| {
                let addr = t.addr.to_canonical();
                nets.iter().any(|n| n.contains(&addr))
            })
            && opt_glob(&self.cgroup, Some(&w.cgroup))
            && opt_glob(&self.unit, w.unit.as_deref())
            && opt_glob(&self.exe, w.exe.as_deref())
            && opt_glob(&self.comm, w.comm.as_deref())
            && opt_glob(&self.target_database, t.database.as_deref())
            && opt_glob(&self.target_user, t.user.as_deref())
            && self.target_host.as_ref().is_none_or(|hosts| {
                t.host
                    .as_deref()
                    .is_some_and(|h| hosts.any(&normalize_host(h)))
            });
        if !rest {
            return Applies::No;
        }
        if self.identity.is_empty() {
            return Applies::Yes;
        }
        match &w.identity {
            None => Applies::Unverified,
            // A claim the verified token does not carry is a verified
            // absence: it does not match.
            Some(id) => {
                if self
                    .identity
                    .iter()
                    .all(|(claim, globs)| id.claims.get(claim).is_some_and(|v| globs.any(v)))
                {
                    Applies::Yes
                } else {
                    Applies::No
                }
            }
        }
    }

    /// Whether a restrictive table (a `[[mask]]` or `[[limit]]` match)
    /// applies: its identity keys count as matching a workload without a
    /// verified identity, so revoking or letting an identity expire never
    /// lifts a mask or a limit.
    pub(crate) fn restricts(&self, w: &Workload, t: &Target) -> bool {
        self.context_match(w, t) != Applies::No
    }

    /// Every key, the operation's included.
    pub(crate) fn applies(&self, w: &Workload, t: &Target, op: &Operation<'_>) -> Applies {
        if self.op_matches(op) {
            self.context_match(w, t)
        } else {
            Applies::No
        }
    }

    /// Whether the matcher uses sql.*, ssh.* or http.* keys.
    pub(crate) fn is_operation_specific(&self) -> bool {
        self.sql.is_some() || self.ssh.is_some() || self.http.is_some()
    }

    /// `key=value` for every key, with the value that matched
    /// (`identity.KEY=<unverified>` for identity keys of a workload without
    /// a verified identity). Only meaningful when [`applies`](Self::applies)
    /// is not [`Applies::No`].
    pub(crate) fn explain(&self, w: &Workload, t: &Target, op: &Operation<'_>) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.protocol.is_some() {
            parts.push(format!("protocol={}", t.protocol));
        }
        if self.cgroup.is_some() {
            parts.push(format!("cgroup={}", w.cgroup));
        }
        for (key, set, value) in [
            ("unit", &self.unit, &w.unit),
            ("exe", &self.exe, &w.exe),
            ("comm", &self.comm, &w.comm),
        ] {
            if let (Some(_), Some(v)) = (set, value) {
                parts.push(format!("{key}={v}"));
            }
        }
        if let (Some(_), Some(uid)) = (&self.uid, w.uid) {
            parts.push(format!("uid={uid}"));
        }
        match &w.identity {
            Some(id) => {
                for (claim, _) in &self.identity {
                    if let Some(v) = id.claims.get(claim) {
                        parts.push(format!("identity.{claim}={v}"));
                    }
                }
            }
            None => {
                for (claim, _) in &self.identity {
                    parts.push(format!("identity.{claim}=<unverified>"));
                }
            }
        }
        if self.target_cidr.is_some() {
            parts.push(format!("target.cidr={}", t.addr.to_canonical()));
        }
        if self.target_port.is_some() {
            parts.push(format!("target.port={}", t.port));
        }
        for (key, set, value) in [
            ("target.host", &self.target_host, &t.host),
            ("target.database", &self.target_database, &t.database),
            ("target.user", &self.target_user, &t.user),
        ] {
            if let (Some(_), Some(v)) = (set, value) {
                parts.push(format!("{key}={v}"));
            }
        }
        match (op, &self.sql, &self.ssh, &self.http) {
            (Operation::Sql(stmt), Some(sql), _, _) => sql.explain(stmt, &mut parts),
            (Operation::SshCommand(cmd), _, Some(ssh), _) => {
                if ssh.command.is_some() {
                    parts.push(format!("ssh.command={}", shorten(cmd)));
                }
                if let Some(re) = ssh.command_regex.iter().flatten().find(|r| r.is_match(cmd)) {
                    parts.push(format!("ssh.command_regex=/{}/", re.as_str()));
                }
            }
            (Operation::Http { method, host, path }, _, _, Some(http)) => {
                if http.method.is_some() {
                    parts.push(format!("http.method={}", method.to_ascii_uppercase()));
                }
                if http.host.is_some() {
                    parts.push(format!("http.host={}", normalize_host(host)));
                }
                if http.path.is_some() {
                    parts.push(format!("http.path={}", shorten(&normalize_path(path))));
                }
            }
            _ => {}
        }
        if parts.is_empty() {
            "no match conditions".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

fn shorten(s: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push('…');
    Cow::Owned(out)
}

impl SqlMatcher {
    fn matches(&self, stmt: &SqlStatement) -> bool {
        self.statement
            .as_ref()
            .is_none_or(|kinds| stmt.kinds.iter().any(|k| kinds.contains(k)))
            && self
                .object
                .as_ref()
                .is_none_or(|os| stmt.objects.iter().any(|o| os.contains(o)))
            && self
                .action
                .as_ref()
                .is_none_or(|acts| stmt.actions.iter().any(|a| acts.contains(a)))
            && self
                .has_where
                .is_none_or(|want| stmt.has_where == Some(want))
            && self
                .tables
                .as_ref()
                .is_none_or(|g| find_name(g, &stmt.tables).is_some())
            && self
                .functions
                .as_ref()
                .is_none_or(|g| find_name(g, &stmt.functions).is_some())
            && self
                .columns
                .as_ref()
                .is_none_or(|g| self.column_match(g, stmt).is_some())
    }

    /// The column that makes `sql.columns` match (`*` for a statement that
    /// may touch columns it does not name).
    fn column_match<'a>(&self, g: &GlobList, stmt: &'a SqlStatement) -> Option<&'a str> {
        stmt.columns
            .iter()
            .find(|c| g.any(c))
            .map(String::as_str)
            .or((self.columns_unnamed && stmt.all_columns).then_some("*"))
    }

    fn explain(&self, stmt: &SqlStatement, parts: &mut Vec<String>) {
        let kinds = self.statement.as_deref().unwrap_or_default();
        if let Some(k) = stmt.kinds.iter().find(|k| kinds.contains(k)) {
            parts.push(format!("sql.statement={k}"));
        }
        let objects = self.object.as_deref().unwrap_or_default();
        if let Some(o) = stmt.objects.iter().find(|o| objects.contains(o)) {
            parts.push(format!("sql.object={o}"));
        }
        let actions = self.action.as_deref().unwrap_or_default();
        if let Some(a) = stmt.actions.iter().find(|a| actions.contains(a)) {
            parts.push(format!("sql.action={a}"));
        }
        if let Some(t) = self
            .tables
            .as_ref()
            .and_then(|g| find_name(g, &stmt.tables))
        {
            parts.push(format!("sql.tables={t}"));
        }
        if let Some(f) = self
            .functions
            .as_ref()
            .and_then(|g| find_name(g, &stmt.functions))
        {
            parts.push(format!("sql.functions={f}"));
        }
        if let Some(c) = self
            .columns
            .as_ref()
            .and_then(|g| self.column_match(g, stmt))
        {
            parts.push(format!("sql.columns={c}"));
        }
        if let Some(w) = self.has_where {
            parts.push(format!("sql.has_where={w}"));
        }
    }
}

impl SshMatcher {
    fn matches(&self, cmd: &str) -> bool {
        self.command.as_ref().is_none_or(|g| g.any(cmd))
            && self
                .command_regex
                .as_ref()
                .is_none_or(|res| res.iter().any(|r| r.is_match(cmd)))
    }
}

impl HttpMatcher {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        self.method
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self
                .host
                .as_ref()
                .is_none_or(|g| g.any(&normalize_host(host)))
            && self
                .path
                .as_ref()
                .is_none_or(|g| g.any(&normalize_path(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise() {
        let cases = [
            ("example.com", "example.com"),
            ("API.Example.COM", "api.example.com"),
            ("example.com.", "example.com"),
            ("example.com:8443", "example.com"),
            ("[::1]:8080", "::1"),
            ("[fe80::1]", "fe80::1"),
            ("::1", "::1"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("host:notaport", "host:notaport"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input), want, "{input}");
        }
    }

    #[test]
    fn paths_normalise() {
        let cases = [
            ("/", "/"),
            ("/api/v1/users", "/api/v1/users"),
            ("/api/v1/users?x=1", "/api/v1/users"),
            ("/api#frag", "/api"),
            ("/a/../admin//x?y", "/admin/x"),
            ("/%61dmin/", "/admin/"),
            ("/a/./b", "/a/b"),
            ("/../../etc", "/etc"),
            ("", "/"),
            ("relative", "/relative"),
            ("/%2e%2e/admin", "/admin"),
            ("/bad%zz", "/bad%zz"),
            ("/bad%", "/bad%"),
            ("/%ff", "/%ff"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), want, "{input}");
        }
    }
}
