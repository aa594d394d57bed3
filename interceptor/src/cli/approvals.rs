//! `interceptor approvals …`: list, approve, deny and watch held commands.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Paths;
use super::output;
use crate::control::Request;
use crate::control::client::{Client, ClientError};
use crate::record::store::ApprovalRow;

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List pending approval requests (with --all: decided ones too), newest first.
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Let a held command run.
    Approve {
        id: i64,
        /// Why (recorded with the approval).
        #[arg(long)]
        reason: Option<String>,
        /// Also allow the same statement shape in that session for this many minutes.
        #[arg(long = "for", value_name = "MINUTES")]
        for_minutes: Option<u32>,
    },
    /// Refuse a held command; the client gets the reason.
    Deny {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print approval requests as they arrive (Ctrl-C stops).
    Watch {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: &ApprovalsCommand, paths: &Paths) -> Result<ExitCode> {
    let mut client = Client::connect(&paths.socket)?;
    match cmd {
        ApprovalsCommand::List { all, json, limit } => {
            let data = client.call(&Request::ApprovalsList {
                all: *all,
                limit: *limit,
            })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&data)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<ApprovalRow> =
                serde_json::from_value(data).context("reading the daemon's answer")?;
            if rows.is_empty() {
                println!("no {}approval requests", if *all { "" } else { "pending " });
            }
            for r in rows {
                print!("{}", output::approval(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve {
            id,
            reason,
            for_minutes,
        } => {
            client.call(&Request::ApprovalsDecide {
                id: *id,
                approve: true,
                reason: reason.clone(),
                scope_minutes: *for_minutes,
            })?;
            match for_minutes {
                Some(m) => println!(
                    "approved request {id} (and its statement shape in that session for {m} min)"
                ),
                None => println!("approved request {id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Deny { id, reason } => {
            client.call(&Request::ApprovalsDecide {
                id: *id,
                approve: false,
                reason: reason.clone(),
                scope_minutes: None,
            })?;
            println!("denied request {id}");
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Watch { json } => {
            client.call(&Request::ApprovalsWatch)?;
            eprintln!("watching for approval requests (Ctrl-C to stop)");
            loop {
                let resp = match client.read_response() {
                    Ok(r) => r,
                    Err(ClientError::Protocol(_)) => return Ok(ExitCode::SUCCESS),
                    Err(e) => return Err(e.into()),
                };
                if !resp.ok {
                    eprintln!("{}", output::esc(&resp.error.unwrap_or_default()));
                    continue;
                }
                if *json {
                    println!("{}", resp.data);
                } else {
                    print!("{}", output::approval_event(&resp.data));
                }
            }
        }
    }
}
