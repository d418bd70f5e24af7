//! Following a cluster's leader: which node a cluster client sends to, and
//! when a leader-only call is retried on another one.
//!
//! A client built with [`ClientBuilder::seeds`](crate::ClientBuilder::seeds)
//! holds one [`Follow`]: the seeds, and the node in use now. Every call of
//! that client goes to the node in use (its transport asks [`Follow::route`]
//! per request). The calls only the leader can do run through
//! [`Follow::run`], which moves the client when a node cannot take them:
//! stream writes (`append`, `append_if`, `append_multi`, `append_multi_if`,
//! `delete`, `tombstone`, `set_stream_metadata`), user and token changes
//! (`create_user`, `delete_user`, `disable_user`, `enable_user`,
//! `update_user`, `change_password`, `reset_password`, `create_token`,
//! `revoke_token`), membership changes (`add_cluster_node`,
//! `remove_cluster_node`) and `start_scavenge`/`stop_scavenge`. Reads
//! (streams, users, tokens, `whoami`, `cluster_status`, `scavenge_status`)
//! stay on the node in use.
//!
//! - `NotLeader { leader: Some(address) }`: switch to `address` (same scheme
//!   and TLS settings as the seeds) and retry at once; a second redirect in
//!   one call, or one naming the node in use, counts as no leader known
//!   (two nodes naming each other or a dead leader: an election is under
//!   way);
//! - `NotLeader { leader: None }`, `Unavailable`, `Connect`: switch to the
//!   next seed, wait (50 ms, doubling up to 250 ms: a leader elected
//!   meanwhile takes the call within one role poll, so longer waits only
//!   delay the failover) and retry;
//! - any other error is the server's answer (`WrongExpectedRevision`,
//!   `AppendConditionFailed`, `UserExists`, ...) and is returned as it is;
//! - once the failover deadline has passed (10 s unless
//!   [`ClientBuilder::failover_deadline`](crate::ClientBuilder::failover_deadline)
//!   says otherwise), the last error is returned. The deadline also bounds
//!   an attempt in flight: a node that never answers ends the call with
//!   `Unavailable`.
//!
//! **Every retry is exact.** A call's protobuf request is built once and
//! each attempt sends a copy of it: for a write the same event ids, the same
//! expected revision, the same DCB condition. That is what makes the retry
//! safe: the outcome of a call that failed with `NotLeader`, `Unavailable`
//! or `Connect` is unknown (the old leader may have replicated it before it
//! went away; a `NotLeader` from a follower comes before it did anything,
//! but one from a leader that lost leadership while replicating the change
//! does not), and the new leader answers an exact retry of a committed write
//! with the original result and `idempotent_replay == true` instead of
//! writing it again; a write that was not committed is written once. Callers
//! that retry on their own must do the same: keep the event ids, never make
//! new ones for a retry (a new id is a new event, written a second time).
//!
//! Other leader-only calls carry no id, so the server cannot tell a retry
//! from a second request: a retry of a change the old leader committed is
//! that change made again. For most that is the same state, or an answer
//! that says so (each method's docs say which): `create_user` may answer
//! `UserExists`, `delete_user` `UserNotFound`, `revoke_token`
//! `TokenNotFound`, `remove_cluster_node` a "not a member" error,
//! `change_password` that the current password is wrong (it is the new one
//! now), `start_scavenge` `OperationInProgress` (or start another run:
//! harmless, a scavenge removes only records no read shows), while
//! `disable_user`, `enable_user`, `update_user`, `reset_password`,
//! `add_cluster_node` and `stop_scavenge` answer as if sent once. The one
//! call whose repeat would make something new is `create_token` (each
//! attempt mints another secret), so it is resent only after a `NotLeader` answer
//! ([`Resend::AfterRefusal`]); after `Unavailable` or `Connect` the client
//! moves to the next seed and returns the error (outcome unknown:
//! `list_tokens` shows whether the token exists).
//!
//! A switch is decided under one short lock and counted by a generation: an
//! attempt that failed moves the client only if no other call moved it since
//! that attempt started, so concurrent calls that fail together move it once.
//! This module owns that decision; it sends nothing itself.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cairn_proto::v1::streams_client::StreamsClient;
use http::uri::Authority;
use tokio::time::Instant;

use crate::transport::{Direct, TlsConnect, Transport};
use crate::{Client, Error, Result};

/// How long a leader-only call keeps trying other nodes, unless
/// [`ClientBuilder::failover_deadline`](crate::ClientBuilder::failover_deadline)
/// says otherwise: long enough for a cluster to elect a new leader.
pub const DEFAULT_FAILOVER_DEADLINE: Duration = Duration::from_secs(10);

/// The wait before the first retry that is not a redirect.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two attempts. A wait happens only while no node
/// in reach names a leader that takes the call (an election is under way, or
/// the named leader is gone): once one is elected it answers within a role
/// poll, so a wait past a few of those only adds to the failover (raft's
/// election timeout is 750-1500 ms).
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The node a cluster client uses now, and how it moves to another. Shared
/// by the client's clones and by its transport.
pub(crate) struct Follow {
    /// The seeds in the order given; tried in turn when the node in use
    /// fails without naming the leader. Never empty.
    seeds: Vec<Authority>,
    /// TLS for `https://` seeds: one configuration (CAs, client
    /// certificate), checked against each node's own host name.
    tls: Option<TlsConnect>,
    /// How long one leader-only call may keep trying.
    deadline: Duration,
    /// Locked only to read or switch the node, never across an await.
    current: Mutex<Current>,
}

/// The node in use.
struct Current {
    /// Its client address (`host:port`).
    authority: Authority,
    /// Its connection (opened by the first call after a switch).
    direct: Direct,
    /// Incremented by every switch.
    generation: u64,
    /// Index into `seeds` of the seed to try next.
    next_seed: usize,
}

/// Which failed attempts of a leader-only call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// After every failure of unknown outcome (`NotLeader`, `Unavailable`,
    /// `Connect`): for calls whose exact repeat does no harm when the first
    /// attempt was committed (writes answer the original result, other
    /// changes come to the same state or answer that it is there).
    AfterUnknownOutcome,
    /// Only after `NotLeader`, which a follower answers before it does
    /// anything: for a call whose repeat would make something a second time
    /// (`create_token`). After `Unavailable` or `Connect` the client moves
    /// to another seed and returns the error.
    AfterRefusal,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Retry {
    /// Retry on the node at this client address (`host:port`).
    OnLeader(String),
    /// Retry on another seed, after a wait.
    OnAnotherNode,
    /// Move to another seed, so the caller's next call goes there, but
    /// return the error: the outcome is unknown and the call may not be
    /// sent twice.
    MoveAndReturn,
    /// The error is the answer.
    Never,
}

/// Which failures are retried under `resend`, and where. Only those whose
/// outcome is unknown or that name the node to use: everything else is the
/// server's answer to this exact request and would be the same answer again.
fn retry_after(error: &Error, resend: Resend) -> Retry {
    match (error, resend) {
        (
            Error::NotLeader {
                leader: Some(leader),
                ..
            },
            _,
        ) => Retry::OnLeader(leader.clone()),
        (Error::NotLeader { leader: None, .. }, _) => Retry::OnAnotherNode,
        (Error::Unavailable(_) | Error::Connect(_), Resend::AfterUnknownOutcome) => {
            Retry::OnAnotherNode
        }
        (Error::Unavailable(_) | Error::Connect(_), Resend::AfterRefusal) => Retry::MoveAndReturn,
        _ => Retry::Never,
    }
}

/// The waits between attempts: [`FIRST_BACKOFF`], doubling, never more than
/// [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Follow")
            .field("seeds", &self.seeds)
            .field("current", &self.lock().authority)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Connects to the first of `seeds` (in order) that accepts a connection; the
/// client starts there and finds the leader with its first leader-only call.
pub(crate) async fn connect(
    seeds: Vec<Authority>,
    tls: Option<TlsConnect>,
    deadline: Duration,
) -> Result<Arc<Follow>> {
    let mut failures = Vec::new();
    for (index, seed) in seeds.iter().enumerate() {
        let node_tls = tls_for(tls.as_ref(), seed)?;
        match Direct::connect(seed.to_string(), node_tls).await {
            Ok(direct) => return Ok(Arc::new(Follow::new(seeds, tls, deadline, index, direct))),
            Err(error) => failures.push(format!("{seed}: {error}")),
        }
    }
    Err(Error::Connect(format!(
        "cannot connect to any seed ({})",
        failures.join("; ")
    )))
}

/// `tls` for the node at `authority`.
fn tls_for(tls: Option<&TlsConnect>, authority: &Authority) -> Result<Option<TlsConnect>> {
    tls.map(|tls| {
        tls.for_host(authority.host())
            .map_err(|error| Error::Connect(format!("cannot set up TLS for {authority}: {error}")))
    })
    .transpose()
}

impl Follow {
    /// Follows from `seeds[connected]`, reached over `direct`.
    fn new(
        seeds: Vec<Authority>,
        tls: Option<TlsConnect>,
        deadline: Duration,
        connected: usize,
        direct: Direct,
    ) -> Self {
        let current = Current {
            authority: seeds[connected].clone(),
            direct,
            generation: 0,
            next_seed: (connected + 1) % seeds.len(),
        };
        Self {
            seeds,
            tls,
            deadline,
            current: Mutex::new(current),
        }
    }

    /// The connection to the node in use, with `request` addressed to it.
    pub(crate) fn route<B>(&self, request: &mut http::Request<B>) -> Direct {
        let (authority, direct) = {
            let current = self.lock();
            (current.authority.clone(), current.direct.clone())
        };
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(authority);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        direct
    }

    /// Runs `attempt` until it succeeds, fails with an answer (or with a
    /// failure `resend` does not retry), or the deadline passes, moving to
    /// the leader in between (see the module docs). `attempt` must send the
    /// same request every time.
    pub(crate) async fn run<T, Fut>(
        &self,
        resend: Resend,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.deadline;
        let mut backoff = Backoff::new();
        // A redirect is retried at once only the first time: two nodes that
        // name each other (an election under way) are retried with waits.
        let mut redirected = false;
        loop {
            let generation = self.lock().generation;
            let error = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "no node answered within the failover deadline ({:?}); the call's \
                         outcome is unknown: retry it exactly (a write with the same event ids)",
                        self.deadline
                    )));
                }
            };
            let wait = match retry_after(&error, resend) {
                Retry::Never => return Err(error),
                Retry::MoveAndReturn => {
                    self.switch_to_next_seed(generation);
                    return Err(error);
                }
                Retry::OnLeader(leader)
                    if self.switch_to_leader(generation, &leader) && !redirected =>
                {
                    redirected = true;
                    Duration::ZERO
                }
                Retry::OnLeader(_) | Retry::OnAnotherNode => {
                    self.switch_to_next_seed(generation);
                    backoff.next_wait()
                }
            };
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Moves to `leader` (`host:port`) unless a switch happened since
    /// `generation`. True when the client now uses another node than the
    /// attempt of `generation` did; false when `leader` is that node itself
    /// (stale news) or not an address.
    fn switch_to_leader(&self, generation: u64, leader: &str) -> bool {
        let Ok(authority) = leader.parse::<Authority>() else {
            return false;
        };
        let mut current = self.lock();
        if current.generation != generation {
            return true;
        }
        if current.authority == authority {
            return false;
        }
        let Ok(tls) = tls_for(self.tls.as_ref(), &authority) else {
            return false;
        };
        current.switch(authority, tls);
        true
    }

    /// Moves to the next seed other than the node in use, unless a switch
    /// happened since `generation`. With one seed the client stays (its
    /// connection reopens by itself).
    fn switch_to_next_seed(&self, generation: u64) {
        let mut current = self.lock();
        if current.generation != generation {
            return;
        }
        for _ in 0..self.seeds.len() {
            let seed = self.seeds[current.next_seed].clone();
            current.next_seed = (current.next_seed + 1) % self.seeds.len();
            if seed == current.authority {
                continue;
            }
            // Every seed's TLS was set up once at connect.
            if let Ok(tls) = tls_for(self.tls.as_ref(), &seed) {
                current.switch(seed, tls);
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Current {
    fn switch(&mut self, authority: Authority, tls: Option<TlsConnect>) {
        self.direct = Direct::lazy(authority.to_string(), tls);
        self.authority = authority;
        self.generation += 1;
    }
}

impl Client {
    /// Sends a stream write through [`Client::on_leader_of`] on the Streams
    /// service (an exact retry by construction).
    pub(crate) async fn on_leader<R, T, Fut>(
        &self,
        request: R,
        call: impl FnMut(StreamsClient<Transport>, R) -> Fut,
    ) -> Result<T>
    where
        R: Clone,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.on_leader_of(&self.streams, Resend::AfterUnknownOutcome, request, call)
            .await
    }

    /// Sends a leader-only call of `service` (a clone of one of the
    /// client's gRPC service clients per attempt): once on a single-node
    /// client; on a cluster client through [`Follow::run`] with `resend`,
    /// each attempt a copy of `request`.
    pub(crate) async fn on_leader_of<S, R, T, Fut>(
        &self,
        service: &S,
        resend: Resend,
        request: R,
        mut call: impl FnMut(S, R) -> Fut,
    ) -> Result<T>
    where
        S: Clone,
        R: Clone,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut once = |request: R| {
            let response = call(service.clone(), request);
            async move { Ok(response.await?.into_inner()) }
        };
        match &self.follow {
            None => once(request).await,
            Some(follow) => follow.run(resend, || once(request.clone())).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn follow(seeds: &[&str], deadline: Duration) -> Follow {
        let seeds: Vec<Authority> = seeds
            .iter()
            .map(|seed| seed.parse().expect("authority"))
            .collect();
        let direct = Direct::lazy(seeds[0].to_string(), None);
        Follow::new(seeds, None, deadline, 0, direct)
    }

    fn in_use(follow: &Follow) -> String {
        follow.lock().authority.to_string()
    }

    fn not_leader(leader: Option<&str>) -> Error {
        Error::NotLeader {
            leader: leader.map(str::to_owned),
            message: "not the leader".into(),
        }
    }

    /// Errors that are the server's answer, never retried.
    fn answers() -> Vec<Error> {
        vec![
            Error::WrongExpectedRevision {
                stream: "s".into(),
                expected: "0".into(),
                current: Some(3),
            },
            Error::AppendConditionFailed { position: 9 },
            Error::DuplicateEventId("id".into()),
            Error::StreamDeleted { stream: "s".into() },
            Error::StreamNotFound { stream: "s".into() },
            Error::UserExists {
                user: "alice".into(),
            },
            Error::UserNotFound {
                user: "alice".into(),
            },
            Error::TokenNotFound { id: "t".into() },
            Error::OperationInProgress {
                operation: "scavenge".into(),
            },
            Error::InvalidArgument("bad".into()),
            Error::LimitExceeded("big".into()),
            Error::PermissionDenied("no".into()),
            Error::Unauthenticated("who".into()),
            Error::Corrupt("crc".into()),
            Error::Other {
                code: tonic::Code::Internal,
                message: "boom".into(),
            },
        ]
    }

    #[test]
    fn only_failures_of_unknown_outcome_are_retried() {
        let resend = Resend::AfterUnknownOutcome;
        assert_eq!(
            retry_after(&not_leader(Some("b:7070")), resend),
            Retry::OnLeader("b:7070".into())
        );
        for error in [
            not_leader(None),
            Error::Unavailable("connection refused".into()),
            Error::Connect("cannot connect".into()),
        ] {
            assert_eq!(retry_after(&error, resend), Retry::OnAnotherNode, "{error}");
        }
        for answer in answers() {
            assert_eq!(retry_after(&answer, resend), Retry::Never, "{answer}");
        }
    }

    #[test]
    fn a_call_resent_only_after_a_refusal_follows_not_leader_and_moves_on_otherwise() {
        let resend = Resend::AfterRefusal;
        assert_eq!(
            retry_after(&not_leader(Some("b:7070")), resend),
            Retry::OnLeader("b:7070".into())
        );
        assert_eq!(retry_after(&not_leader(None), resend), Retry::OnAnotherNode);
        for error in [
            Error::Unavailable("connection reset".into()),
            Error::Connect("cannot connect".into()),
        ] {
            assert_eq!(retry_after(&error, resend), Retry::MoveAndReturn, "{error}");
        }
        for answer in answers() {
            assert_eq!(retry_after(&answer, resend), Retry::Never, "{answer}");
        }
    }

    #[test]
    fn backoff_doubles_from_50_ms_and_never_exceeds_250_ms() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        let millis: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [50, 100, 200, 250, 250, 250, 250, 250]);
    }

    #[test]
    fn concurrent_failures_of_one_attempt_move_the_client_once() {
        let follow = follow(&["a:1", "b:1", "c:1"], DEFAULT_FAILOVER_DEADLINE);
        let generation = follow.lock().generation;
        follow.switch_to_next_seed(generation);
        follow.switch_to_next_seed(generation);
        assert_eq!(in_use(&follow), "b:1");
        // A redirect learned by an attempt older than the switch keeps the
        // newer choice, and says the client moved (retry at once).
        assert!(follow.switch_to_leader(generation, "c:1"));
        assert_eq!(in_use(&follow), "b:1");
    }

    #[test]
    fn the_next_seed_follows_the_seed_order_and_skips_the_node_in_use() {
        let follow = follow(&["a:1", "b:1", "c:1"], DEFAULT_FAILOVER_DEADLINE);
        // Started on a, redirected to b; then every failure moves on in
        // seed order from after a, passing over b while b is in use.
        assert!(follow.switch_to_leader(0, "b:1"));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let generation = follow.lock().generation;
            follow.switch_to_next_seed(generation);
            seen.push(in_use(&follow));
        }
        assert_eq!(seen, ["c:1", "a:1", "b:1"]);
    }

    #[test]
    fn a_node_naming_itself_or_garbage_as_leader_is_not_followed() {
        let follow = follow(&["a:1", "b:1"], DEFAULT_FAILOVER_DEADLINE);
        assert!(!follow.switch_to_leader(0, "a:1"));
        assert!(!follow.switch_to_leader(0, "not an address"));
        assert_eq!(in_use(&follow), "a:1");
    }

    /// Runs `follow.run` under `resend` with an attempt that answers from
    /// `script` in turn (the last answer repeating) and records the node in
    /// use at each try.
    async fn run_script(
        follow: &Follow,
        resend: Resend,
        script: Vec<Result<&'static str>>,
    ) -> (Result<&'static str>, Vec<String>) {
        let attempts = AtomicUsize::new(0);
        let tried = Mutex::new(Vec::new());
        let result = follow
            .run(resend, || {
                let index = attempts
                    .fetch_add(1, Ordering::Relaxed)
                    .min(script.len() - 1);
                tried.lock().expect("tried").push(in_use(follow));
                let answer = script[index].clone();
                async move { answer }
            })
            .await;
        (result, tried.into_inner().expect("tried"))
    }

    #[tokio::test]
    async fn a_write_follows_redirects_and_other_seeds_until_a_node_takes_it() {
        let follow = follow(&["a:1", "b:1", "c:1"], DEFAULT_FAILOVER_DEADLINE);
        let (result, tried) = run_script(
            &follow,
            Resend::AfterUnknownOutcome,
            vec![
                Err(not_leader(Some("c:1"))),
                Err(Error::Unavailable("c went away".into())),
                Err(not_leader(None)),
                Err(Error::Connect("refused".into())),
                Ok("written"),
            ],
        )
        .await;
        assert_eq!(result, Ok("written"));
        assert_eq!(tried, ["a:1", "c:1", "b:1", "c:1", "a:1"]);
        // The client stays on the node that took the write.
        assert_eq!(in_use(&follow), "a:1");
    }

    #[tokio::test]
    async fn an_answer_is_returned_without_a_retry() {
        let follow = follow(&["a:1", "b:1"], DEFAULT_FAILOVER_DEADLINE);
        let conflict = Error::AppendConditionFailed { position: 4 };
        for resend in [Resend::AfterUnknownOutcome, Resend::AfterRefusal] {
            let (result, tried) = run_script(&follow, resend, vec![Err(conflict.clone())]).await;
            assert_eq!(result, Err(conflict.clone()));
            assert_eq!(tried, ["a:1"]);
        }
        assert_eq!(in_use(&follow), "a:1");
    }

    #[tokio::test]
    async fn a_call_resent_only_after_a_refusal_is_not_sent_again_after_an_unknown_outcome() {
        let follow = follow(&["a:1", "b:1", "c:1"], DEFAULT_FAILOVER_DEADLINE);
        let (result, tried) = run_script(
            &follow,
            Resend::AfterRefusal,
            vec![
                Err(not_leader(Some("c:1"))),
                Err(not_leader(None)),
                Err(Error::Unavailable("b went away".into())),
                Ok("a second token"),
            ],
        )
        .await;
        assert_eq!(result, Err(Error::Unavailable("b went away".into())));
        assert_eq!(tried, ["a:1", "c:1", "b:1"]);
        // The caller's next call goes to the next seed, not to the node
        // that went away.
        assert_eq!(in_use(&follow), "c:1");
    }

    #[tokio::test]
    async fn after_the_deadline_the_last_error_is_returned() {
        let follow = follow(&["a:1", "b:1"], Duration::from_millis(300));
        let (result, tried) = run_script(
            &follow,
            Resend::AfterUnknownOutcome,
            vec![
                Err(not_leader(None)),
                Err(Error::Unavailable("still electing".into())),
            ],
        )
        .await;
        assert_eq!(result, Err(Error::Unavailable("still electing".into())));
        assert!(tried.len() >= 2, "{tried:?}");
    }
}
