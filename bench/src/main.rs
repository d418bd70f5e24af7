//! `cairn-bench`: Cairn's load generator (see `shared/WORKLOAD.md` and
//! `bench/README.md`).
//!
//! ```text
//! cairn-bench run       [--addr URL] [--unsynced] [--only w1,w2,...] [--json FILE]
//! cairn-bench subscribe [--addr URL] [--json FILE]
//! cairn-bench crash     [--runs R] [--clients N]
//! cairn-bench cluster-crash [--runs R] [--clients N] [--seed N] [--dir PATH] [--json FILE]
//! cairn-bench cluster-run [--only w1,w2,w3] [--max-seconds S] [--dir PATH] [--server-bin PATH] [--json FILE]
//! cairn-bench storage   [--dir PATH] [--events N] [--unsynced] [--json FILE]
//! cairn-bench compare   [--peers postgres,redis,nats,umadb] [--skip-missing] [--dir PATH] [--json FILE]
//! cairn-bench dcb       [--stores cairn,umadb] [--seconds 20] [--dir PATH] [--json FILE]
//! cairn-bench persistent [--addr URL] [--events N] [--json FILE]
//! cairn-bench large     [--addr URL] [--sizes 65536,1048576] [--counts 2000,200] [--json FILE]
//! cairn-bench many-streams [--addr URL] [--streams N] [--clients W] [--json FILE]
//! cairn-bench scale     [--events 20000000] [--streams N] [--server-arg FLAG]... [--json FILE]
//! cairn-bench fanout    [--addr URL] [--subscribers 1,10,100] [--events K] [--json FILE]
//! cairn-bench soak      [--addr URL --server-pid PID] [--duration 1h] [--sample-seconds 10]
//! ```
//!
//! - `run`: the server workloads W1-W6 through `cairn-client`, written against
//!   the small [`target::Target`] trait so a peer store can be measured by the
//!   same code later.
//! - `subscribe`: live delivery latency and catch-up read rate of `$all`.
//! - `crash`: SIGKILLs the server under concurrent appends, restarts it and
//!   checks that every acknowledged event survived exactly once.
//! - `cluster-crash`: the same against a three-node cluster: SIGKILLs the
//!   leader under appends that follow the leader, measures the failover,
//!   restarts the node and checks every node holds every acknowledged event
//!   and the same `$all`, event for event.
//! - `cluster-run`: W1-W3 as `run` measures them, against one node and then
//!   against a fresh three-node cluster (through its leader), side by side
//!   with the cluster ÷ single ratio.
//! - `storage`: the storage engine alone, in-process, against the disk's
//!   fdatasync rate.
//! - `scale`: a store filled to tens of millions of events in millions of
//!   streams, with append, read, memory and disk figures at checkpoints.
//!
//! Module map: `workload` builds the event, `workloads` runs W1-W5 (and W6's
//! writer), `w6` the subscriber process, `target` the store seam, `server`
//! the child `cairn` process, `sample` what it reads of the server from
//! outside (RSS, data-directory size, free space), `verify` the crash test's
//! checker, `disk`, `stats`, `machine`, `report`, `cpu` and `targets` the
//! measuring and reporting.

/// The same allocator as the `cairn` binary, so client-side figures are not
/// dominated by glibc's malloc either.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod clock;
mod cluster_crash;
mod cluster_run;
mod compare;
mod cpu;
mod crash;
mod dcb;
mod disk;
mod fanout;
mod large;
mod machine;
mod many_streams;
mod peers;
mod persistent;
mod report;
mod run;
mod sample;
mod scale;
mod server;
mod soak;
mod stats;
mod storage;
mod subscribe;
mod target;
mod targets;
mod verify;
mod w6;
mod workload;
mod workloads;

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
    /// The workloads W1-W6 of WORKLOAD.md against a server (started here
    /// unless --addr is given), with ratios to the targets.
    Run(run::RunArgs),
    /// Subscriber figures: live append->delivery latency and catch-up rate.
    Subscribe(subscribe::SubscribeArgs),
    /// Crash test: SIGKILL the server under load, restart, and check that
    /// every acknowledged event is there exactly once.
    Crash(crash::CrashArgs),
    /// Cluster crash test: three nodes, SIGKILL the leader under load,
    /// measure the failover, restart it, and check that every node holds
    /// every acknowledged event and the same `$all`.
    ClusterCrash(cluster_crash::ClusterCrashArgs),
    /// W1-W3 against one node, then against a fresh three-node cluster
    /// (appends to its leader): both side by side, with cluster ÷ single.
    ClusterRun(cluster_run::ClusterRunArgs),
    /// Micro-benchmark of the storage engine: durable single-event and batched
    /// appends with 1..64 writer threads, compared with the disk's fdatasync rate.
    Storage(storage::StorageArgs),
    /// W6's subscriber process (started by `run`).
    #[command(hide = true)]
    Subscriber(w6::SubscriberArgs),
    /// Cairn and its peers (PostgreSQL, Redis, NATS, UmaDB) through W1-W6 in
    /// one run: one table with Cairn/peer ratios (peers from bench/peers.sh).
    Compare(compare::CompareArgs),
    /// Dynamic consistency boundaries: conditional appends (1 and 16
    /// clients), racing deciders and tag-query reads, Cairn and UmaDB in one
    /// run, one table with Cairn/UmaDB ratios.
    Dcb(dcb::DcbArgs),
    /// Consumer groups: events/s delivered and acked with 1 and 4 consumers.
    Persistent(persistent::PersistentArgs),
    /// Large events (64 KiB and 1 MiB): sequential durable appends and reads
    /// back, ev/s and MB/s, content checked byte for byte.
    Large(large::LargeArgs),
    /// 1,000,000 streams of one event each from 16 clients: append rate, and
    /// the server's memory and data-directory size as they grow.
    ManyStreams(many_streams::ManyStreamsArgs),
    /// Scale: fill a fresh store with 20,000,000 events in 10,000,000 streams
    /// and measure appends, stream reads, `$all` reads, RSS, disk and CPU per
    /// event at 1M, 5M, 10M and the end.
    Scale(scale::ScaleArgs),
    /// Fan-out: one writer, 1/10/100 live subscribers of `$all`: delivery
    /// latency and total delivered events/s.
    Fanout(fanout::FanoutArgs),
    /// Soak: a steady mixed load (appends, reads, subscriptions, a consumer
    /// group, idle and abusive connections) for --duration, with the server's
    /// RSS, fds, CPU and append latency sampled; fails if RSS or fds grow.
    Soak(soak::SoakArgs),
    /// W6's subscriber process for a peer (started by `compare`).
    #[command(hide = true)]
    PeerSubscriber(peers::PeerSubscriberArgs),
}

/// Runs an async subcommand on a multi-threaded runtime.
fn block_on(future: impl Future<Output = Result<(), BoxError>>) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => block_on(run::run(&args)),
        Command::Subscribe(args) => block_on(subscribe::run(&args)),
        Command::Crash(args) => block_on(crash::run(&args)),
        Command::ClusterCrash(args) => block_on(cluster_crash::run(&args)),
        Command::ClusterRun(args) => block_on(cluster_run::run(&args)),
        Command::Storage(args) => storage::run(&args),
        Command::Subscriber(args) => block_on(w6::subscriber(&args)),
        Command::Compare(args) => block_on(compare::run(&args)),
        Command::Dcb(args) => block_on(dcb::run(&args)),
        Command::Persistent(args) => block_on(persistent::run(&args)),
        Command::Large(args) => block_on(large::run(&args)),
        Command::ManyStreams(args) => block_on(many_streams::run(&args)),
        Command::Scale(args) => block_on(scale::run(&args)),
        Command::Fanout(args) => block_on(fanout::run(&args)),
        Command::Soak(args) => block_on(soak::run(&args)),
        Command::PeerSubscriber(args) => block_on(peers::subscriber(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
