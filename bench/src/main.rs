//! `cairn-bench`: Cairn's load generator (see `shared/WORKLOAD.md` and
//! `bench/README.md`).
//!
//! Today it has one subcommand, `storage`: a micro-benchmark of the storage
//! engine alone (no server, no network), which measures durable appends against
//! the disk's own fdatasync rate. The server workloads W1-W6 and the peer
//! comparisons arrive with the server.
//!
//! ```text
//! cairn-bench storage [--dir PATH] [--events N] [--unsynced] [--json FILE]
//! ```

mod disk;
mod machine;
mod report;
mod stats;
mod storage;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The error type of the whole program: benchmarks only report, never recover.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench",
    version,
    about = "Cairn's load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Micro-benchmark of the storage engine: durable single-event and batched
    /// appends with 1..64 writer threads, compared with the disk's fdatasync rate.
    Storage(storage::StorageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Storage(args) => storage::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
