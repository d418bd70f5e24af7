//! The `cairn` binary: parses configuration, sets up logging, binds, and hands
//! Ctrl-C / SIGTERM to `cairn_server::run`. Client subcommands and `repair` go to
//! `commands`.
//!
//! This crate sits on top of both `cairn-server` (the daemon) and
//! `cairn-client` (the subcommands), so neither depends on the other.

mod cluster;
mod commands;
mod operations;
mod users;

use std::process::ExitCode;

use clap::Parser;
use commands::{Cli, Command, run_client_command};

/// mimalloc instead of glibc's malloc: every read and append allocates per
/// event (strings, buffers, protobuf messages), often on one thread and freed
/// on another; profiles of the read path showed malloc/free as its largest cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("received Ctrl-C"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Repair { data }) = &cli.command {
        let data = match data {
            Some(data) => data.clone(),
            None => match cli.settings.resolve() {
                Ok(settings) => settings.data,
                Err(error) => {
                    eprintln!("cairn: {error}");
                    return ExitCode::from(2);
                }
            },
        };
        return match commands::run_repair(&data) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cairn: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Restore { from, data }) = &cli.command {
        return match operations::run_restore(from, data) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cairn: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::DevCerts { out, hosts }) = &cli.command {
        return match commands::run_dev_certs(out, hosts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cairn: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cairn: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        None | Some(Command::Serve) => {
            let settings = match cli.settings.resolve() {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("cairn: {error}");
                    return ExitCode::from(2);
                }
            };
            // Refused modes (a network address without TLS) are one line on
            // stderr, before logging starts or anything is opened.
            if let Err(error) = settings.mode() {
                eprintln!("cairn: {error}");
                return ExitCode::from(2);
            }
            cairn_server::init_tracing(&settings);
            let result = runtime.block_on(async {
                let store = cairn_server::open_store(&settings)?;
                let listener = tokio::net::TcpListener::bind(settings.listen).await?;
                cairn_server::run(listener, store, settings, shutdown_signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "cairn stopped with an error");
                    eprintln!("cairn: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(command) => match runtime.block_on(run_client_command(command, &cli.connect)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cairn: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
