//! The `vigil` node daemon and command-line interface, as a library so the benchmarks
//! and tests can use its API client and harness; the binary is a thin `main`.
//!
//! Architecture Invariant: this is the only crate that reads the node configuration,
//! binds the API, or owns the process's signal handling and exit codes.

pub mod api;
pub mod certs;
pub mod cli;
pub mod config;
pub mod coordination;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exit;
pub mod guard;
pub mod members;
pub mod render;
pub mod spec_file;
pub mod telemetry;
pub mod toml_field;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{CertsCommand, Cli, Command};
use crate::config::NodeConfig;
use crate::exit::Failure;

/// Parses the command line, runs the command, and returns the documented exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vigil: cannot start the async runtime: {error}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("vigil: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config, log_format } => {
            let config = NodeConfig::load(&config).map_err(|e| Failure::config(e.to_string()))?;
            let format = log_format.unwrap_or(config.log.format);
            telemetry::init_logging(format, &config.log.level, Some(config.id));
            daemon::run(config, format).await.map_err(|error| {
                tracing::error!(error = format!("{error:#}"), "node failed");
                if daemon::is_storage_failure(&error) {
                    Failure::storage(format!("{error:#}"))
                } else {
                    Failure::from(error)
                }
            })
        }
        Command::CheckConfig { file } => {
            let config = NodeConfig::load(&file).map_err(|e| Failure::config(e.to_string()))?;
            println!(
                "{}: ok (node {} \"{}\" of cluster \"{}\", {} initial members)",
                file.display(),
                config.id,
                config.info.name,
                config.cluster_name,
                config.initial_members.len()
            );
            Ok(())
        }
        Command::Certs(CertsCommand::Init { out, nodes, cluster, sans, operator }) => {
            for path in certs::init(&out, &cluster, &nodes, &sans, &operator)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Certs(CertsCommand::Issue { dir, node, operator, role, sans }) => {
            let what = match (&node, &operator, role) {
                (Some(id), _, _) => certs::IssueFor::Node(*id),
                (None, Some(name), Some(role)) => certs::IssueFor::Operator(name, role),
                (None, Some(_), None) => {
                    return Err(Failure::usage("--role: give admin or viewer for an operator".to_string()));
                }
                (None, None, _) => {
                    return Err(Failure::usage("give --node ID or --operator NAME".to_string()));
                }
            };
            for path in certs::issue(&dir, what, &sans)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Status { target, json } => cli::status(&target, json).await,
        Command::Members { target, json, action } => cli::members(&target, json, &action).await,
        Command::Note { target, author, text } => cli::note(&target, &author, &text).await,
        Command::History { target, group, json } => cli::history(&target, group.as_deref(), json).await,
        Command::Apply { target, file } => cli::apply(&target, &file).await,
        Command::Spec { target, json } => cli::spec(&target, json).await,
        Command::Pause { target, group } => cli::set_paused(&target, &group, true).await,
        Command::Resume { target, group } => cli::set_paused(&target, &group, false).await,
        Command::Switchover { target, group, to, no_wait } => {
            cli::start_run(&target, &group, to.as_deref(), false, !no_wait).await
        }
        Command::Failover { target, group, to, yes, no_wait } => {
            if !yes {
                return Err(Failure::usage(format!(
                    "a forced failover promotes {to} even if it lags, and the transactions it lacks are lost; \
                     add --yes to confirm"
                )));
            }
            cli::start_run(&target, &group, Some(&to), true, !no_wait).await
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).await,
        Command::FenceGuard { socket, node_id, log_format } => {
            telemetry::init_logging(log_format, config::DEFAULT_LOG_FILTER, node_id);
            guard::run(&socket).await.map_err(Failure::from)
        }
    }
}
