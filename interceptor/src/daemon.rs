//! `interceptor run`: the daemon.
//!
//! Start-up order matters for failing closed: the programs are loaded and
//! the rule tables written with proxy port 0 (intercepted connects refused)
//! until the listener is bound; only then is the real port published.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result, bail};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::approval::{Approvals, Resolution};
use crate::config::Config;
use crate::control::peer::{OutsideCaller, PeerProcess};
use crate::control::server::Peer;
use crate::control::{self, AttachResult, CgroupSelector, InterceptInfo, Status, UidAttachResult};
use crate::identity::CgroupPaths;
use crate::identity::enroll::{Admit, Enrollment, Enrollments, RejectLimiter, now_unix, replay_id};
use crate::identity::jwks::HttpsFetcher;
use crate::identity::token::Verifier;
use crate::proxy::gate::SqlCache;
use crate::proxy::tls::{self, LocalCa};
use crate::proxy::{self, ProxyCounters, Sessions};
use crate::record::{self, Recorder, WriteOp, store};
use crate::redirect::cgroup::is_within;
use crate::redirect::{Cgroup2, OriginTable, RedirectOptions, Redirector};

/// State shared by the proxy and the control socket.
pub struct Shared {
    pub config: Config,
    policy: RwLock<Arc<policy::Policy>>,
    pub recorder: Recorder,
    redirector: Mutex<Redirector>,
    pub origins: OriginTable,
    pub cgroup: Cgroup2,
    pub paths: CgroupPaths,
    pub sessions: Sessions,
    pub counters: ProxyCounters,
    pub started_at: String,
    /// The daemon's own cgroup: never attachable.
    own_cgroup: Option<String>,
    pub approvals: Approvals,
    pub sql_cache: SqlCache,
    /// Local CA for terminating client TLS.
    pub tls: Arc<LocalCa>,
    /// Client configuration for TLS to original destinations.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    pub enrollments: Enrollments,
    /// None when no `[[identity.issuer]]` is configured.
    pub verifier: Option<Verifier>,
    /// Serialises the check-record-bind step of enrollments, so two
    /// concurrent enrollments of one cgroup cannot both pass the check.
    enroll_lock: tokio::sync::Mutex<()>,
    /// Bounds how many rejected enrollments are recorded.
    rejects: RejectLimiter,
}

impl Shared {
    pub fn policy(&self) -> Arc<policy::Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the policy file; on success swaps it in (and rewrites the
    /// kernel rule tables), on error keeps the current one.
    pub fn reload_policy(&self) -> Result<String> {
        let new = load_policy(&self.config.policy)?;
        {
            let mut r = self
                .redirector
                .lock()
                .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?;
            r.apply_rules(
                new.intercepts(),
                new.egress_allow(),
                new.defaults().egress == policy::Egress::Deny,
                true,
            )?;
        }
        let summary = format!(
            "{} rules, {} intercept rules, {} mask rules",
            new.rules().len(),
            new.intercepts().len(),
            new.masker().rules().len()
        );
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        info!(policy = %self.config.policy.display(), %summary, "policy reloaded");
        Ok(summary)
    }

    /// The attached cgroup covering `cgroup` (itself or an ancestor), by
    /// cgroup id: what the kernel intercepts. A cgroup recreated under an
    /// attached path is not attached (its id differs); a renamed attached
    /// cgroup still is. An error when some level cannot be looked at (the
    /// cgroup was removed meanwhile): the caller must refuse.
    pub fn attached_covering(&self, cgroup: &str) -> Result<Option<String>> {
        let attached: std::collections::HashSet<u64> = self
            .redirector
            .lock()
            .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?
            .attached()
            .map(|a| a.id)
            .collect();
        let mut path = cgroup.trim_end_matches('/').to_string();
        loop {
            if path.is_empty() {
                path.push('/');
            }
            let id = self.cgroup.id_of(&path)?;
            if attached.contains(&id) {
                return Ok(Some(path));
            }
            match path.rfind('/') {
                Some(0) if path.len() > 1 => path.truncate(1),
                Some(i) if i > 0 => path.truncate(i),
                _ => return Ok(None),
            }
        }
    }

    /// Establishes that the process behind a control connection is outside
    /// every attached cgroup, as every state-changing request requires
    /// (approve/deny, attach, detach, policy reload, revoking another
    /// cgroup's enrollment). Refuses when the process cannot be pinned (it
    /// exited after connecting) or its cgroup cannot be read.
    pub fn outside_caller(&self, peer: Peer, proc: &PeerProcess) -> Result<OutsideCaller> {
        let cg = proc.cgroup(&self.cgroup).map_err(|e| {
            anyhow::anyhow!("refused: {e}; state-changing requests need a caller whose cgroup can be established")
        })?;
        // A process of an attached uid is intercepted wherever it runs.
        let uid_attached = self
            .redirector
            .lock()
            .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?
            .uid_attached(peer.uid);
        if uid_attached {
            bail!(
                "refused: this request comes from uid {}, which is attached; a workload cannot approve its own commands or change what intercepts it",
                peer.uid
            );
        }
        match self.attached_covering(&cg) {
            Ok(None) => Ok(OutsideCaller::new(peer, cg)),
            Ok(Some(a)) => bail!(
                "refused: this request comes from inside an attached cgroup ({cg}, covered by {a}); a workload cannot approve its own commands or change what intercepts it"
            ),
            Err(e) => {
                bail!("refused: cannot tell whether {cg} is inside an attached cgroup ({e:#})")
            }
        }
    }

    /// Whether `sel` names a cgroup that is attached already (same id):
    /// attaching it again changes nothing, so it is allowed from inside an
    /// attached cgroup too (a runner unit's `ExecStartPre=+interceptor
    /// attach --unit %n` runs in the unit's cgroup, which is still attached
    /// when leftover processes kept it alive across a restart).
    pub fn already_attached(&self, sel: &CgroupSelector) -> bool {
        let Ok(path) = self.select(sel) else {
            return false;
        };
        let Ok(id) = self.cgroup.id_of(&path) else {
            return false;
        };
        self.redirector
            .lock()
            .map(|r| r.attached().any(|a| a.id == id))
            .unwrap_or(false)
    }

    /// The unit pending approvals are bounded by: the outermost attached
    /// cgroup covering `cgroup` (the job), else `cgroup` itself.
    pub fn job_cgroup(&self, cgroup: &str) -> String {
        self.attached_paths()
            .into_iter()
            .filter(|a| is_within(cgroup, a))
            .min_by_key(|a| a.len())
            .unwrap_or_else(|| cgroup.to_string())
    }

    /// An approver's decision on a pending request. The caller was
    /// established outside every attached cgroup.
    pub async fn decide_approval(
        &self,
        id: i64,
        approve: bool,
        reason: Option<String>,
        scope_minutes: Option<u32>,
        caller: &OutsideCaller,
    ) -> Result<serde_json::Value> {
        let peer = caller.peer();
        let conn = store::open_ro(&self.config.database)?;
        let row = store::get_approval(&conn, id)?
            .with_context(|| format!("no approval request with id {id}"))?;
        drop(conn);
        if row.status != "pending" {
            let by = row
                .decided_by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
            let when = row
                .decided_at
                .as_deref()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default();
            bail!("approval request {id} is already {}{by}{when}", row.status);
        }
        if !approve && scope_minutes.is_some() {
            bail!("--for only applies to approvals");
        }
        if scope_minutes.is_some() && row.shape.is_none() {
            bail!(
                "approval request {id} can only be approved as its exact text (its statement carries code in string literals or dynamic SQL, or could not be parsed, so its shape says nothing about what runs); approve it without --for"
            );
        }
        // The workload's own user does not decide its own commands, not even
        // from outside the cgroup (a login shell of the CI user, a cron job).
        let held_uid = self
            .approvals
            .owner(id)
            .map(|o| o.uid)
            .unwrap_or_else(|| row.uid.and_then(|u| u32::try_from(u).ok()));
        if !self.config.approvals.allow_same_uid && held_uid == Some(peer.uid) {
            bail!(
                "refused: approval request {id} holds a command of a process running as uid {}, the approver's own uid; a workload's user cannot decide its own commands (set [approvals] allow_same_uid = true in interceptor.toml to allow it)",
                peer.uid
            );
        }
        let by_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {}", peer.uid));
        let at = record::now_rfc3339();
        let resolution = Resolution {
            approved: approve,
            by_uid: peer.uid,
            by_name: by_name.clone(),
            reason: reason.clone(),
            scope_minutes,
            at: at.clone(),
        };
        if !self.approvals.resolve(id, resolution) {
            bail!(
                "approval request {id} is no longer pending (it timed out or its session ended at {})",
                record::now_rfc3339()
            );
        }
        let status = if approve { "approved" } else { "denied" };
        self.recorder
            .commit(WriteOp::ApprovalDecided {
                id,
                status,
                at: at.clone(),
                by_uid: peer.uid,
                by: by_name.clone(),
                reason,
                scope_minutes,
            })
            .await?;
        info!(approval = id, by = %by_name, %status, "approval decided");
        Ok(serde_json::json!({ "id": id, "status": status, "by": by_name, "at": at }))
    }

    /// Records a rejected enrollment, within the rejection rate limit (a
    /// workload retrying garbage must not fill the database or the log).
    async fn reject_enrollment(
        &self,
        path: &str,
        cgroup_id: u64,
        pid: Option<u32>,
        uid: u32,
        reason: String,
    ) -> Result<()> {
        let suppressed = match self.rejects.admit(path, now_unix()) {
            Admit::Suppress => {
                tracing::debug!(cgroup = %path, ?pid, %reason, "enrollment rejected (not recorded: rate limit)");
                return Ok(());
            }
            Admit::Record { suppressed } => suppressed,
        };
        warn!(cgroup = %path, ?pid, %reason, suppressed, "enrollment rejected");
        let reason = if suppressed > 0 {
            format!(
                "{reason} ({suppressed} earlier rejected attempts from this cgroup were not recorded: rate limit)"
            )
        } else {
            reason
        };
        self.recorder
            .commit(WriteOp::Enrollment(Box::new(
                crate::record::EnrollmentRecord {
                    at: record::now_rfc3339(),
                    status: "rejected",
                    reason: Some(reason),
                    cgroup_path: path.to_string(),
                    cgroup_id,
                    pid,
                    uid: Some(uid),
                    ..Default::default()
                },
            )))
            .await?;
        Ok(())
    }

    /// Verifies a token and binds it to the caller's cgroup: the cgroup of
    /// the process that connected, which must still live.
    pub async fn enroll(
        &self,
        token: &str,
        peer: Peer,
        proc: &PeerProcess,
    ) -> Result<serde_json::Value> {
        let path = proc
            .cgroup(&self.cgroup)
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        let pid = proc.cred_pid();
        if path == "/" {
            bail!(
                "refusing to enroll the root cgroup: run `interceptor enroll` from inside the workload's own cgroup"
            );
        }
        let cgroup_id = self.cgroup.id_of(&path)?;
        let Some(verifier) = &self.verifier else {
            bail!(
                "no [[identity.issuer]] is configured in {}; enrollment is not possible",
                self.config
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the daemon configuration".into())
            );
        };
        let token = token.trim();
        let now = now_unix();
        let vt = match verifier.verify(token, now).await {
            Ok(vt) => vt,
            Err(e) => {
                self.reject_enrollment(&path, cgroup_id, pid, peer.uid, e.to_string())
                    .await?;
                bail!("token rejected: {e}");
            }
        };
        let token_id = replay_id(vt.token_id.as_deref(), token);

        // Check, record and bind as one step.
        let _serial = self.enroll_lock.lock().await;
        self.enrollments.prune(now);
        // Still the process that connected, still in that cgroup.
        let again = proc
            .cgroup(&self.cgroup)
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        if again != path || self.cgroup.id_of(&path)? != cgroup_id {
            bail!("refused: the enrolling process left {path} while its token was verified");
        }
        if let Err(e) = self.enrollments.check(
            &self.cgroup,
            &path,
            cgroup_id,
            &vt.issuer,
            &vt.claims,
            &token_id,
            now,
        ) {
            self.reject_enrollment(&path, cgroup_id, pid, peer.uid, e.to_string())
                .await?;
            bail!("token refused: {e}");
        }
        let at = record::now_rfc3339();
        let claims_json = serde_json::to_string(&vt.claims).ok();
        self.recorder
            .commit(WriteOp::Enrollment(Box::new(
                crate::record::EnrollmentRecord {
                    at: at.clone(),
                    status: "active",
                    reason: None,
                    cgroup_path: path.clone(),
                    cgroup_id,
                    pid,
                    uid: Some(peer.uid),
                    issuer: Some(vt.issuer.clone()),
                    subject: Some(vt.subject.clone()),
                    token_id: Some(token_id.clone()),
                    claims: claims_json,
                    expires_at: i64::try_from(vt.expires_at).ok(),
                },
            )))
            .await?;
        self.enrollments.bind(
            Enrollment {
                cgroup_path: path.clone(),
                cgroup_id,
                identity: policy::Identity {
                    issuer: vt.issuer.clone(),
                    subject: vt.subject.clone(),
                    claims: vt.claims.clone(),
                },
                token_id: Some(token_id.clone()),
                expires_at: vt.expires_at,
                enrolled_at: at,
            },
            token_id.clone(),
        );
        info!(cgroup = %path, ?pid, issuer = %vt.issuer, subject = %vt.subject, "enrolled");
        let named: std::collections::BTreeMap<&str, &String> = vt
            .shape
            .named_fields()
            .iter()
            .filter_map(|k| vt.claims.get(*k).map(|v| (*k, v)))
            .collect();
        Ok(serde_json::json!({
            "cgroup": path,
            "issuer": vt.issuer,
            "subject": vt.subject,
            "shape": vt.shape.as_str(),
            "token_id": token_id,
            "expires_at": vt.expires_at,
            "claims": named,
        }))
    }

    /// The workload ends its own enrollment (the cgroup of the process that
    /// connected). Its identity ends at once; the binding stays until its
    /// token expires, so the cgroup cannot then enroll as another identity.
    pub async fn revoke_own_enrollment(
        &self,
        peer: Peer,
        proc: &PeerProcess,
    ) -> Result<serde_json::Value> {
        let path = proc
            .cgroup(&self.cgroup)
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        let _serial = self.enroll_lock.lock().await;
        let removed = self.enrollments.revoke(&path);
        let Some(e) = removed else {
            bail!("cgroup {path} has no active enrollment");
        };
        self.recorder
            .commit(WriteOp::EnrollmentRevoked {
                cgroup_path: path.clone(),
                at: record::now_rfc3339(),
                by_uid: peer.uid,
                status: "revoked",
            })
            .await?;
        info!(cgroup = %path, subject = %e.identity.subject, "enrollment revoked by the workload");
        Ok(serde_json::json!({ "cgroup": path, "revoked": true, "released": false }))
    }

    /// An administrator ends a cgroup's enrollment and its binding: the
    /// cgroup may be enrolled afresh, as any identity.
    pub async fn release_enrollment(
        &self,
        cgroup: &str,
        caller: &OutsideCaller,
    ) -> Result<serde_json::Value> {
        let path = self.cgroup.normalise(cgroup)?;
        let _serial = self.enroll_lock.lock().await;
        if !self.enrollments.release(&path) {
            bail!("cgroup {path} has no enrollment");
        }
        self.recorder
            .commit(WriteOp::EnrollmentRevoked {
                cgroup_path: path.clone(),
                at: record::now_rfc3339(),
                by_uid: caller.peer().uid,
                status: "released",
            })
            .await?;
        info!(cgroup = %path, by_uid = caller.peer().uid, "enrollment released by an administrator");
        Ok(serde_json::json!({ "cgroup": path, "revoked": true, "released": true }))
    }

    /// `status --pid`: where a process lives and whether it is intercepted.
    pub fn where_is(&self, pid: u32) -> Result<serde_json::Value> {
        let cgroup = self.cgroup.of_pid(pid)?;
        let attached = self
            .attached_paths()
            .into_iter()
            .filter(|a| is_within(&cgroup, a))
            .max_by_key(|a| a.len());
        let identity = self
            .enrollments
            .lookup(&self.cgroup, &cgroup, now_unix())
            .map(|e| serde_json::json!({ "enrolled_cgroup": e.cgroup_path, "issuer": e.identity.issuer, "subject": e.identity.subject, "repository": e.identity.claims.get("repository"), "sha": e.identity.claims.get("sha") }));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string());
        Ok(serde_json::json!({
            "pid": pid,
            "exe": exe,
            "cgroup": cgroup,
            "unit": crate::redirect::cgroup::unit_of(&cgroup),
            "attached": attached,
            "attached_uid": self.pid_attached_uid(pid),
            "identity": identity,
        }))
    }

    /// The real uid of `pid` when that uid is attached.
    fn pid_attached_uid(&self, pid: u32) -> Option<u32> {
        let uid = crate::redirect::uids::real_uid_of(pid)?;
        let r = self.redirector.lock().ok()?;
        r.uid_attached(uid).then_some(uid)
    }

    /// Where identity lookups search for a cgroup id they have not seen:
    /// the attached cgroups, and the whole hierarchy once a uid is attached
    /// (its processes can live anywhere).
    pub fn identity_roots(&self) -> Vec<String> {
        let mut roots = self.attached_paths();
        let any_uid = self
            .redirector
            .lock()
            .map(|r| r.attached_uids().next().is_some())
            .unwrap_or(false);
        if any_uid {
            roots.push("/".to_string());
        }
        roots
    }

    /// `attach --uid`: the uid programs on the cgroup2 root intercept every
    /// process of that real uid. Root (and the daemon's own uid) is refused.
    pub fn attach_uid(&self, user: &str, peer: control::server::Peer) -> Result<UidAttachResult> {
        let (uid, name) = resolve_user(user)?;
        if uid == 0 {
            return Err(crate::redirect::uids::UidStoreError::Root.into());
        }
        if uid == nix::unistd::getuid().as_raw() || uid == nix::unistd::geteuid().as_raw() {
            bail!(
                "refusing to attach uid {uid}: the interceptor daemon itself runs as that user; run the agent as a dedicated user"
            );
        }
        let changed = self
            .redirector
            .lock()
            .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?
            .attach_uid(crate::redirect::UidAttachment {
                uid,
                user: name.clone(),
                attached_at: Some(record::now_rfc3339()),
                by_uid: Some(peer.uid),
            })?;
        info!(uid, user = ?name, by_uid = peer.uid, changed, "uid attached");
        Ok(UidAttachResult {
            uid,
            user: name,
            changed,
        })
    }

    pub fn detach_uid(&self, user: &str) -> Result<UidAttachResult> {
        let (uid, name) = resolve_user(user)?;
        let changed = self
            .redirector
            .lock()
            .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?
            .detach_uid(uid)?;
        if changed {
            info!(uid, user = ?name, "uid detached");
        }
        Ok(UidAttachResult {
            uid,
            user: name,
            changed,
        })
    }

    pub fn attached_paths(&self) -> Vec<String> {
        match self.redirector.lock() {
            Ok(r) => r.attached().map(|a| a.path.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn select(&self, sel: &CgroupSelector) -> Result<String> {
        let path = match (&sel.cgroup, &sel.unit, sel.pid) {
            (Some(c), None, None) => self.cgroup.normalise(c)?,
            (None, Some(u), None) => self.cgroup.of_unit(u)?,
            (None, None, Some(p)) => self.cgroup.of_pid(p)?,
            _ => bail!("name exactly one of --cgroup, --unit or --pid"),
        };
        Ok(path)
    }

    pub async fn attach(
        &self,
        sel: &CgroupSelector,
        peer: control::server::Peer,
    ) -> Result<AttachResult> {
        let path = self.select(sel)?;
        if path == "/" {
            bail!(
                "refusing to attach the root cgroup: that would intercept every process on the host, the daemon included; attach the agent's own cgroup"
            );
        }
        if let Some(own) = &self.own_cgroup
            && is_within(own, &path)
        {
            bail!(
                "refusing to attach {path}: the interceptor daemon itself runs in {own}; move the agent into a cgroup of its own"
            );
        }
        let attached = {
            let mut r = self
                .redirector
                .lock()
                .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?;
            r.attach(&path)?
        };
        self.paths.remember(attached.id, &attached.path);
        self.recorder
            .commit(WriteOp::Attach {
                cgroup_id: attached.id,
                cgroup_path: attached.path.clone(),
                at: record::now_rfc3339(),
                by_uid: Some(peer.uid),
            })
            .await?;
        info!(cgroup = %attached.path, id = attached.id, "attached");
        Ok(AttachResult {
            cgroup_id: attached.id,
            cgroup: attached.path,
            changed: true,
        })
    }

    pub async fn detach(&self, sel: &CgroupSelector) -> Result<AttachResult> {
        let path = self.select(sel)?;
        // The cgroup may already be gone; then find its id by path.
        let id = match self.cgroup.id_of(&path) {
            Ok(id) => id,
            Err(_) => self
                .redirector
                .lock()
                .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?
                .attached()
                .find(|a| a.path == path)
                .map(|a| a.id)
                .with_context(|| format!("cgroup {path} is not attached"))?,
        };
        let removed = {
            let mut r = self
                .redirector
                .lock()
                .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?;
            r.detach(id)?
        };
        self.recorder
            .commit(WriteOp::Detach { cgroup_id: id })
            .await?;
        if removed.is_some() {
            info!(cgroup = %path, id, "detached");
        }
        Ok(AttachResult {
            cgroup_id: id,
            cgroup: path,
            changed: removed.is_some(),
        })
    }

    pub fn status(&self) -> Status {
        let policy = self.policy();
        let (attached, attached_uids, kernel) = match self.redirector.lock() {
            Ok(r) => (
                r.attached()
                    .map(|a| AttachResult {
                        cgroup_id: a.id,
                        cgroup: a.path.clone(),
                        changed: false,
                    })
                    .collect(),
                r.attached_uids().cloned().collect(),
                r.counters(),
            ),
            Err(_) => (Vec::new(), Vec::new(), Default::default()),
        };
        Status {
            enrollments: self
                .enrollments
                .list(now_unix())
                .into_iter()
                .map(|e| {
                    serde_json::json!({
                        "cgroup": e.cgroup_path,
                        "issuer": e.identity.issuer,
                        "subject": e.identity.subject,
                        "repository": e.identity.claims.get("repository"),
                        "sha": e.identity.claims.get("sha"),
                        "expires_at": e.expires_at,
                    })
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: self.started_at.clone(),
            cgroup_root: self.cgroup.mount().display().to_string(),
            pin_dir: self.config.bpf_pin_dir.display().to_string(),
            proxy_port: self.config.proxy_port,
            database: self.config.database.display().to_string(),
            policy: self.config.policy.display().to_string(),
            egress: policy.defaults().egress.to_string(),
            attached,
            attached_uids,
            intercepts: policy
                .intercepts()
                .iter()
                .map(|r| InterceptInfo {
                    port: r.port,
                    cidr: r.net.as_ref().map(|n| n.to_string()),
                    protocol: r.protocol.to_string(),
                })
                .collect(),
            live_sessions: self
                .sessions
                .list()
                .into_iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect(),
            counters: serde_json::json!({
                "kernel": kernel,
                "proxy": self.counters.snapshot(),
                "recorder": self.recorder.stats(),
            }),
        }
    }
}

/// A user name or a numeric uid, with its name when it has one.
fn resolve_user(user: &str) -> Result<(u32, Option<String>)> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok((uid, crate::redirect::uids::user_name(uid)));
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), Some(u.name))),
        Ok(None) => bail!("no user named {user:?} (give a user name or a numeric uid)"),
        Err(e) => bail!("looking up user {user:?}: {e}"),
    }
}

/// Reads and validates the policy file.
pub fn load_policy(path: &std::path::Path) -> Result<policy::Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    let name = path.display().to_string();
    policy::Policy::parse(&text, &name).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let policy = load_policy(&config.policy)?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "interceptor run must be started as root (it loads eBPF programs and attaches them to cgroups); use the systemd unit or sudo"
        );
    }
    let cgroup = Cgroup2::detect(config.cgroup_root.as_deref())?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let _lock = lock_state_dir(&config.state_dir)?;

    let (recorder, writer) = Recorder::start(&config.database, config.sync)?;
    let first_approval = {
        let conn = store::open_ro(&config.database)?;
        store::max_approval_id(&conn)? + 1
    };
    let mut redirector = Redirector::load(
        RedirectOptions {
            pin_dir: config.bpf_pin_dir.clone(),
            proxy_port: config.proxy_port,
            socket_mark: config.socket_mark,
            uid_state: config.state_dir.join("attached-uids.json"),
        },
        cgroup.clone(),
    )?;
    let egress_deny = policy.defaults().egress == policy::Egress::Deny;
    // Not ready until the listener is bound: intercepted connects are refused.
    redirector.apply_rules(
        policy.intercepts(),
        policy.egress_allow(),
        egress_deny,
        false,
    )?;
    match redirector.take_logger() {
        Ok(logger) => spawn_kernel_logger(logger),
        Err(e) => warn!(error = %e, "kernel-side logging unavailable"),
    }

    let local_ca = Arc::new(LocalCa::load_or_create(&config.tls.ca_dir)?);
    let upstream_tls = tls::upstream_config(
        config.tls.upstream_verify,
        config.tls.upstream_ca_file.as_deref(),
    )?;
    let paths = CgroupPaths::default();
    reconcile_attachments(&mut redirector, &config, &paths, &recorder).await?;

    let listeners = proxy::bind(config.proxy_port).await.with_context(|| {
        format!(
            "binding the proxy listener on 127.0.0.1:{}",
            config.proxy_port
        )
    })?;
    redirector.apply_rules(
        policy.intercepts(),
        policy.egress_allow(),
        egress_deny,
        true,
    )?;

    let control = control::server::bind(
        &config.control_socket,
        config.control_group.as_deref(),
        false,
    )?;
    let enroll_socket = control::server::bind(&config.identity.enroll_socket, None, true)?;
    let verifier = if config.identity.issuers.is_empty() {
        None
    } else {
        let fetcher = Arc::new(HttpsFetcher {
            mark: config.socket_mark,
            timeout: std::time::Duration::from_secs(10),
        });
        Some(
            Verifier::new(config.identity.issuers.clone(), Some(fetcher))
                .map_err(|e| anyhow::anyhow!("[[identity.issuer]]: {e}"))?
                .with_max_token_age(Some(config.identity.max_token_age.as_secs())),
        )
    };
    let enrollments = Enrollments::default();
    {
        let conn = store::open_ro(&config.database)?;
        let rows = store::list_enrollments(&conn, false, u32::MAX)?;
        enrollments.restore(&rows, now_unix());
    }
    let own_cgroup = cgroup.of_pid(std::process::id()).ok();
    let shared = Arc::new(Shared {
        origins: redirector.origins(),
        redirector: Mutex::new(redirector),
        policy: RwLock::new(Arc::new(policy)),
        recorder,
        cgroup,
        paths,
        sessions: Sessions::default(),
        counters: ProxyCounters::default(),
        started_at: record::now_rfc3339(),
        own_cgroup,
        approvals: Approvals::new(first_approval),
        sql_cache: SqlCache::default(),
        tls: local_ca,
        upstream_tls,
        enrollments,
        verifier,
        enroll_lock: tokio::sync::Mutex::new(()),
        rejects: RejectLimiter::default(),
        config: config.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for l in listeners {
        let addr = l.local_addr().ok();
        info!(listen = ?addr, "proxy listening");
        tasks.push(tokio::spawn(proxy::serve(
            l,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(control::server::serve(
        control,
        shared.clone(),
        control::server::Kind::Control,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(control::server::serve(
        enroll_socket,
        shared.clone(),
        control::server::Kind::Enroll,
        stop_rx.clone(),
    )));
    notify_systemd("READY=1");
    info!(
        config = ?config.source,
        policy = %config.policy.display(),
        database = %config.database.display(),
        control = %config.control_socket.display(),
        "interceptor ready"
    );

    wait_for_shutdown(&shared).await;
    notify_systemd("STOPPING=1");
    info!("shutting down: no new connections; waiting for live sessions");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&config.control_socket);
    let _ = std::fs::remove_file(&config.identity.enroll_socket);
    let left = shared.sessions.drain(config.shutdown_grace).await;
    if left > 0 {
        warn!(
            sessions = left,
            "sessions still open at the end of the grace period"
        );
    }
    // Links stay pinned: attached cgroups keep failing closed while we are down.
    drop(shared);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok();
    info!("stopped");
    Ok(())
}

/// Brings kernel attachments in line with the database after a (re)start:
/// re-attaches every recorded cgroup that still exists (fresh programs,
/// pins swapped atomically), forgets cgroups that are gone, and adopts
/// pinned links the database does not know about.
async fn reconcile_attachments(
    redirector: &mut Redirector,
    config: &Config,
    paths: &CgroupPaths,
    recorder: &Recorder,
) -> Result<()> {
    let conn = store::open_ro(&config.database)?;
    let recorded = store::attachments(&conn)?;
    drop(conn);
    let mut seen = std::collections::HashSet::new();
    for a in recorded {
        let id = a.cgroup_id as u64;
        seen.insert(id);
        match redirector.cgroup().id_of(&a.cgroup_path) {
            Ok(current) if current == id => match redirector.attach(&a.cgroup_path) {
                Ok(att) => {
                    paths.remember(att.id, &att.path);
                    info!(cgroup = %att.path, "re-attached");
                }
                Err(e) => error!(cgroup = %a.cgroup_path, error = %e, "cannot re-attach"),
            },
            _ => {
                warn!(cgroup = %a.cgroup_path, "attached cgroup no longer exists; forgetting it");
                redirector.detach(id)?;
                recorder.commit(WriteOp::Detach { cgroup_id: id }).await?;
            }
        }
    }
    let roots = ["/".to_string()];
    for id in redirector.pinned_ids() {
        if seen.contains(&id) {
            continue;
        }
        match redirector.cgroup().path_of_id(id, &roots[0]) {
            Some(path) => {
                let att = redirector.attach(&path)?;
                paths.remember(att.id, &att.path);
                recorder
                    .commit(WriteOp::Attach {
                        cgroup_id: att.id,
                        cgroup_path: att.path.clone(),
                        at: record::now_rfc3339(),
                        by_uid: None,
                    })
                    .await?;
                info!(cgroup = %att.path, "adopted pinned attachment");
            }
            None => {
                redirector.detach(id)?;
            }
        }
    }
    for u in redirector.restore_uids()? {
        info!(uid = u.uid, user = ?u.user, "uid attachment restored");
    }
    Ok(())
}

fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer fd and hands ownership to
        // the AsyncFd, which never closes or replaces it while registered.
        let registered =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "kernel-side logging unavailable");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// One daemon per state directory.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path: PathBuf = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another interceptor daemon holds {} ({e}); stop it first",
            path.display()
        )
    })
}

/// Waits for SIGTERM/SIGINT; SIGHUP reloads the policy meanwhile.
async fn wait_for_shutdown(shared: &Shared) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                if let Err(e) = shared.reload_policy() {
                    error!(error = %format!("{e:#}"), "policy reload failed; keeping the current policy");
                }
            }
        }
    }
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
fn notify_systemd(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = PathBuf::from(&path);
    let res = if let Some(abs) = p.to_str().and_then(|s| s.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = res {
        warn!(error = %e, "sd_notify failed");
    }
}
