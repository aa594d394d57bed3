//! Telling people that an approval is waiting: an optional command hook
//! (the request as JSON on its stdin) and an optional webhook (the request
//! as a JSON POST body). Both run in the background with a timeout; a slow
//! or failing hook never delays the data path.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::ApprovalRequest;
use crate::config::ApprovalConfig;

/// Fires the configured notifications for one new request.
pub fn spawn(cfg: &ApprovalConfig, mark: u32, req: &ApprovalRequest) {
    let Ok(body) = serde_json::to_vec(req) else {
        return;
    };
    if let Some(cmd) = cfg.command.clone() {
        let body = body.clone();
        let timeout = cfg.notify_timeout;
        let id = req.id;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, run_command(&cmd, &body, id)).await {
                Ok(Ok(())) => debug!(approval = id, "approval command hook ran"),
                Ok(Err(e)) => warn!(approval = id, error = %e, "approval command hook failed"),
                Err(_) => warn!(
                    approval = id,
                    "approval command hook timed out after {timeout:?}"
                ),
            }
        });
    }
    if let Some(url) = cfg.webhook.clone() {
        let timeout = cfg.notify_timeout;
        let id = req.id;
        tokio::spawn(async move {
            match crate::http_client::request(
                "POST",
                &url,
                Some("application/json"),
                &body,
                mark,
                timeout,
            )
            .await
            {
                Ok(r) if (200..300).contains(&r.status) => {
                    debug!(approval = id, "approval webhook delivered")
                }
                Ok(r) => warn!(
                    approval = id,
                    status = r.status,
                    "approval webhook answered with an error status"
                ),
                Err(e) => warn!(approval = id, error = %e, "approval webhook failed"),
            }
        });
    }
}

async fn run_command(cmd: &[String], body: &[u8], id: i64) -> std::io::Result<()> {
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("INTERCEPTOR_APPROVAL_ID", id.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).await?;
        stdin.write_all(b"\n").await?;
    }
    let status = child.wait().await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("exited with {status}")))
    }
}

/// Default time a hook may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
