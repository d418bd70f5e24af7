//! The node-to-node gRPC transport of openraft: the `cairn.cluster.v1.Raft`
//! service (`proto/cairn/cluster/v1/raft.proto`) from both ends.
//!
//! - [`GrpcNetworkFactory`] is the [`RaftNetworkFactory`] a node's raft is
//!   built with. It hands openraft one [`GrpcConnection`] per peer, which sends
//!   `AppendEntries`, `Vote` and `InstallSnapshot` to `http://{raft address}` over
//!   a lazily connected tonic channel, and ends a call that outlives
//!   [`RPCOption::hard_ttl`] as openraft's [`Timeout`]. A route given with
//!   [`GrpcNetworkFactory::with_routes`] replaces the node's raft address for that peer:
//!   how this node reaches it, when that is not the address the membership
//!   publishes (a node behind NAT or on another interface, or a test's
//!   fault-injecting proxy on one directed link).
//!   With [`GrpcNetworkFactory::with_tls`] every channel is mutual TLS: the
//!   connector opens TCP, then a rustls handshake that presents this node's
//!   certificate and checks the peer's against the cluster CA for the host of
//!   the address dialled (a route's host when there is one), ALPN `h2`.
//! - [`RaftService`] is the server side: it decodes each request, hands it to
//!   the local [`openraft::Raft`] (`append_entries`, `vote`,
//!   `install_snapshot`) and sends back what raft returned.
//!
//! The wire carries openraft's own types, postcard-encoded in the `payload`
//! bytes: the request as the sender's raft built it, and the receiver's
//! `Result`, so the caller gets openraft's errors as openraft made them
//! ([`RPCError::RemoteError`]). For `AppendEntries` and `Vote` the error side is
//! [`Fatal`] (their `RaftError` has no API error, and serde cannot encode
//! `Infallible`); for `InstallSnapshot` it is the whole
//! `RaftError<InstallSnapshotError>`. A failed call, as opposed to a raft
//! refusal, is a gRPC status: a peer that cannot be reached is
//! [`RPCError::Unreachable`] (openraft backs off before retrying), any other
//! failure of the transport is [`RPCError::Network`].
//!
//! Both ends bound what they decode to the configured `max_message_bytes`
//! (tonic's `max_decoding_message_size`), and a sender refuses to send a
//! larger request: an `AppendEntries` that is too large (or, with several
//! entries, larger than [`APPEND_ENTRIES_BATCH_BYTES`], so that it crosses
//! within openraft's heartbeat-long deadline) goes back to openraft as
//! [`RPCError::PayloadTooLarge`] with half as many entries as a hint, so the
//! replication retries with smaller batches. Snapshot chunks are bounded by
//! openraft's `Config::snapshot_max_chunk_size`, which must stay below
//! `max_message_bytes`.
//!
//! This module owns the transport and nothing else: it never reads or writes
//! the raft log, the state machine or the store, and it holds no membership
//! (the addresses come from the membership's nodes through [`RaftAddress`]:
//! Cairn's [`Member`], or openraft's [`BasicNode`] in tests, except where this
//! node was given its own route to a peer). Without TLS the channels are
//! plaintext `http://` and the service authenticates no peer; the server
//! (`cairn-server`) then serves it only on loopback or with `--insecure`.
//! The server side of mutual TLS (which client certificates the listener
//! accepts) is the listener's, not this module's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::cluster::v1::raft_client::RaftClient;
use cairn_proto::cluster::v1::raft_server::{Raft as RaftRpc, RaftServer};
use cairn_proto::cluster::v1::{RaftRequest, RaftResponse};
use hyper_util::rt::TokioIo;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftTypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};

use crate::types::Member;

/// What the transport needs of a membership's node: the `host:port` its
/// raft listener is reached at. Any openraft `Node` type that has one can
/// be sent to.
pub trait RaftAddress {
    /// `host:port` of the node's node-to-node listener.
    fn raft_address(&self) -> &str;
}

impl RaftAddress for BasicNode {
    fn raft_address(&self) -> &str {
        &self.addr
    }
}

impl RaftAddress for Member {
    fn raft_address(&self) -> &str {
        &self.raft
    }
}

/// The default bound on one node-to-node message, each way: 16 MiB. It must
/// hold openraft's largest request, a batch of `Config::max_payload_entries`
/// entries or one snapshot chunk of `Config::snapshot_max_chunk_size` (3 MiB
/// by default); a larger batch is split (see the module docs).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes one `AppendEntries` of several entries may encode to. openraft
/// gives every `AppendEntries` one heartbeat interval to complete
/// ([`RPCOption::hard_ttl`]); a batch that cannot cross in that time (a new
/// or returning follower offered many large groups) would time out and be
/// offered again, for ever. Larger batches go back to openraft as
/// [`RPCError::PayloadTooLarge`] with fewer entries.
pub const APPEND_ENTRIES_BATCH_BYTES: usize = 1024 * 1024;

/// A failure of the transport itself, as opposed to an error the peer's raft
/// returned. It reaches openraft inside [`NetworkError`] or [`Unreachable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A message is larger than the node-to-node bound.
    #[error(
        "raft {rpc} message of {actual} bytes exceeds the node-to-node limit of {limit} bytes; \
         raise max_message_bytes or lower openraft's max_payload_entries / snapshot_max_chunk_size"
    )]
    TooLarge {
        /// The RPC the message belongs to.
        rpc: RPCTypes,
        /// The encoded size.
        actual: usize,
        /// The configured bound.
        limit: usize,
    },
    /// A message could not be postcard-encoded.
    #[error("could not encode a raft {rpc} message: {source}")]
    Encode {
        /// The RPC the message belongs to.
        rpc: RPCTypes,
        /// What postcard said.
        source: postcard::Error,
    },
    /// A payload did not decode as the openraft type expected: the peers run
    /// different raft type configurations or versions.
    #[error(
        "could not decode a raft {rpc} message: {source}; do all nodes run the same Cairn version?"
    )]
    Decode {
        /// The RPC the message belongs to.
        rpc: RPCTypes,
        /// What postcard said.
        source: postcard::Error,
    },
    /// The peer's address does not form a valid `http://` URI.
    #[error("node {target} has an invalid address {addr:?}: {source}")]
    Address {
        /// The peer's node id.
        target: u64,
        /// The address used for it: its route, or else its raft address.
        addr: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// The call failed with a gRPC status (refused, reset, or the peer
    /// rejected the message).
    #[error("raft {rpc} call failed: {status}")]
    Status {
        /// The RPC that failed.
        rpc: RPCTypes,
        /// The status the call ended with.
        status: Status,
    },
}

/// Creates the [`GrpcConnection`]s of one node's raft, one per peer, sharing a
/// lazily connected channel per peer address.
#[derive(Debug)]
pub struct GrpcNetworkFactory {
    /// This node's id: openraft's [`Timeout`] names the node that gave up.
    id: u64,
    /// The bound on one message each way (see [`DEFAULT_MAX_MESSAGE_BYTES`]).
    max_message_bytes: usize,
    /// How this node reaches a peer when that is not the raft address in
    /// the peer's membership node: peer id to `host:port`. The membership holds one
    /// address per node, the same for every node that reads it; a route is
    /// this node's alone (NAT, another interface, a proxy on one link).
    routes: HashMap<u64, String>,
    /// One channel per peer, with the address it was made for (the route if
    /// there is one, else the node's raft address). openraft asks for a new client
    /// per replication stream and per election; a tonic channel multiplexes
    /// calls and reconnects by itself, so they share one connection instead
    /// of opening a new one each time. A peer whose address changed gets a
    /// new channel.
    channels: HashMap<u64, (String, Channel)>,
    /// Mutual TLS for every channel: trusted CAs and this node's identity,
    /// ALPN `h2`. `None`: plaintext.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl GrpcNetworkFactory {
    /// The network of node `id`, bounding each message to `max_message_bytes`
    /// (both what it sends and what it accepts back).
    pub fn new(id: u64, max_message_bytes: usize) -> Self {
        Self {
            id,
            max_message_bytes,
            routes: HashMap::new(),
            channels: HashMap::new(),
            tls: None,
        }
    }

    /// Connects to every peer over TLS with `config`: it should trust the
    /// cluster's CA and present this node's certificate (mutual TLS). Each
    /// peer's certificate must name the host of the address dialled (its route
    /// or its raft address), IP address or DNS name. ALPN is set to `h2`
    /// whatever `config` says, since the service is gRPC.
    pub fn with_tls(mut self, mut config: rustls::ClientConfig) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.tls = Some(Arc::new(config));
        self
    }

    /// Gives this node its own address (`host:port`) for each peer in
    /// `routes`, used instead of the raft address in that peer's membership
    /// node; peers without a route are reached at their node's address. A
    /// route replaces an earlier one for the same peer. Errors still name the
    /// peer's node, which identifies it to openraft.
    pub fn with_routes(mut self, routes: HashMap<u64, String>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// The address this node uses for `target`: its route, else the node's
    /// raft address.
    fn address<'a>(&'a self, target: u64, node: &'a impl RaftAddress) -> &'a str {
        self.routes
            .get(&target)
            .map_or(node.raft_address(), String::as_str)
    }

    /// The shared channel to `target` at `addr`, made (without connecting) if
    /// there is none for that address yet.
    fn channel(&mut self, target: u64, addr: &str) -> Result<Channel, TransportError> {
        if let Some((known, channel)) = self.channels.get(&target)
            && known == addr
        {
            return Ok(channel.clone());
        }
        // The scheme stays `http`: with TLS the connector below does the
        // handshake, and tonic's own (disabled) TLS never sees the URI.
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
            TransportError::Address {
                target,
                addr: addr.to_owned(),
                source,
            }
        })?;
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(config) => endpoint.connect_with_connector_lazy(tls_connector(Arc::clone(config))),
        };
        self.channels
            .insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

/// The connector of a TLS channel: TCP (Nagle off) to the URI's host and
/// port, then a rustls handshake with `config` that expects the host
/// ([`dial_target`]) in the peer's certificate. A failed handshake fails the
/// call as `UNAVAILABLE`, like a refused connection.
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future + Send,
> + Clone
+ Send
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let (host, port, name) = dial_target(&uri)?;
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let stream = connector.connect(name, stream).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// Where a TLS channel to `uri` connects (host and port) and the name the
/// peer's certificate must hold: the URI's host as a DNS name or an IP
/// address, an IPv6 one without the brackets the URI needs (`[::1]` is
/// `::1`, which is how a certificate names it).
fn dial_target(
    uri: &Uri,
) -> std::io::Result<(String, u16, rustls::pki_types::ServerName<'static>)> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("{uri} has no host")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid(format!("{uri} has no port")))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|error| invalid(format!("{host:?} is not a host name or address: {error}")))?;
    Ok((host, port, name))
}

impl<C> RaftNetworkFactory<C> for GrpcNetworkFactory
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Node: RaftAddress,
{
    type Network = GrpcConnection<C::Node>;

    async fn new_client(&mut self, target: u64, node: &C::Node) -> GrpcConnection<C::Node> {
        let addr = self.address(target, node).to_owned();
        let client = self.channel(target, &addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes)
        });
        GrpcConnection {
            id: self.id,
            target,
            node: node.clone(),
            max_message_bytes: self.max_message_bytes,
            client,
        }
    }
}

/// One node's connection to one peer (known to openraft as node `N`), as
/// openraft uses it.
#[derive(Debug)]
pub struct GrpcConnection<N> {
    /// This node's id (for [`Timeout`]).
    id: u64,
    /// The peer's id.
    target: u64,
    /// The peer, for [`RemoteError`]s.
    node: N,
    /// The bound on a request this side sends.
    max_message_bytes: usize,
    /// The stub, or why there is none: an invalid address fails each call as
    /// [`RPCError::Unreachable`], since `new_client` cannot fail.
    client: Result<RaftClient<Channel>, TransportError>,
}

/// Why a call produced no answer from the peer's raft; becomes an
/// [`RPCError`] of whichever API error the RPC has.
enum CallFailure {
    /// The call outlived the RPC's hard TTL.
    Timeout(Timeout<u64>),
    /// The peer cannot be reached: openraft backs off.
    Unreachable(Unreachable),
    /// The request encodes to more than the bound: a network error, unless
    /// the RPC can be split (`append_entries` turns it into
    /// [`RPCError::PayloadTooLarge`]).
    TooLarge(TransportError),
    /// Any other failure of the transport: openraft retries at once.
    Network(NetworkError),
}

impl CallFailure {
    fn into_rpc_error<N: openraft::Node, E: std::error::Error>(self) -> RPCError<u64, N, E> {
        match self {
            CallFailure::Timeout(e) => RPCError::Timeout(e),
            CallFailure::Unreachable(e) => RPCError::Unreachable(e),
            CallFailure::TooLarge(e) => RPCError::Network(NetworkError::new(&e)),
            CallFailure::Network(e) => RPCError::Network(e),
        }
    }
}

/// How a failed call's status reaches openraft: a peer that is down or not
/// listening (`UNAVAILABLE`: refused, reset, no route) is unreachable, so
/// openraft backs off instead of spinning; every other status (the peer
/// refused the message as too large or undecodable, an internal failure) is a
/// network error.
fn status_failure(rpc: RPCTypes, status: Status) -> CallFailure {
    let unavailable = status.code() == Code::Unavailable;
    let error = TransportError::Status { rpc, status };
    if unavailable {
        CallFailure::Unreachable(Unreachable::new(&error))
    } else {
        CallFailure::Network(NetworkError::new(&error))
    }
}

impl<N: openraft::Node> GrpcConnection<N> {
    /// Sends one request of at most `limit` encoded bytes (at most the
    /// node-to-node bound) and decodes the peer raft's `Result<Resp, W>`.
    async fn call<Req, Resp, W>(
        &mut self,
        rpc: RPCTypes,
        request: &Req,
        option: &RPCOption,
        limit: usize,
    ) -> Result<Result<Resp, W>, CallFailure>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        W: DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(error) => return Err(CallFailure::Unreachable(Unreachable::new(error))),
        };
        let payload =
            encode(rpc, request).map_err(|e| CallFailure::Network(NetworkError::new(&e)))?;
        let limit = limit.min(self.max_message_bytes);
        if payload.len() > limit {
            return Err(CallFailure::TooLarge(TransportError::TooLarge {
                rpc,
                actual: payload.len(),
                limit,
            }));
        }
        let message = Request::new(RaftRequest {
            payload: Bytes::from(payload),
        });
        let sent = async {
            match rpc {
                RPCTypes::AppendEntries => client.append_entries(message).await,
                RPCTypes::Vote => client.vote(message).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        let timeout = option.hard_ttl();
        let response = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(status_failure(rpc, status)),
            Err(_elapsed) => {
                return Err(CallFailure::Timeout(Timeout {
                    action: rpc,
                    id: self.id,
                    target: self.target,
                    timeout,
                }));
            }
        };
        decode(rpc, &response.payload).map_err(|e| CallFailure::Network(NetworkError::new(&e)))
    }

    /// The peer raft's error as openraft's [`RPCError::RemoteError`].
    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<u64, N, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }
}

impl<C> RaftNetwork<C> for GrpcConnection<C::Node>
where
    C: RaftTypeConfig<NodeId = u64>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, C::Node, RaftError<u64>>> {
        let entries = rpc.entries.len() as u64;
        // Several entries are sent only within the batch budget; one entry
        // alone may use the whole node-to-node bound.
        let limit = if entries > 1 {
            APPEND_ENTRIES_BATCH_BYTES
        } else {
            usize::MAX
        };
        match self
            .call::<_, _, Fatal<u64>>(RPCTypes::AppendEntries, &rpc, &option, limit)
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(fatal)) => Err(self.remote(RaftError::Fatal(fatal))),
            // Too large to send: let openraft retry with half the entries.
            // A single entry that does not fit stays a network error.
            Err(CallFailure::TooLarge(_)) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Err(failure) => Err(failure.into_rpc_error()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, C::Node, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call::<_, _, RaftError<u64, InstallSnapshotError>>(
                RPCTypes::InstallSnapshot,
                &rpc,
                &option,
                usize::MAX,
            )
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.remote(error)),
            Err(failure) => Err(failure.into_rpc_error()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, C::Node, RaftError<u64>>> {
        match self
            .call::<_, _, Fatal<u64>>(RPCTypes::Vote, &rpc, &option, usize::MAX)
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(fatal)) => Err(self.remote(RaftError::Fatal(fatal))),
            Err(failure) => Err(failure.into_rpc_error()),
        }
    }
}

/// The server side of `cairn.cluster.v1.Raft`: hands each request to the local
/// raft and returns what it answered.
pub struct RaftService<C: RaftTypeConfig> {
    /// The node's raft; every RPC goes to it unchanged.
    raft: openraft::Raft<C>,
    /// The bound on a message the service decodes (and encodes).
    max_message_bytes: usize,
}

impl<C> RaftService<C>
where
    C: RaftTypeConfig<NodeId = u64>,
{
    /// The service of `raft`, refusing a request larger than
    /// `max_message_bytes` (use the same bound as the peers' factories).
    pub fn new(raft: openraft::Raft<C>, max_message_bytes: usize) -> Self {
        Self {
            raft,
            max_message_bytes,
        }
    }

    /// The tonic service to add to the cluster listener's server, with the
    /// message bound applied: a larger request is refused with
    /// `OUT_OF_RANGE` ("decoded message length too large") before it is
    /// decoded.
    pub fn into_server(self) -> RaftServer<Self> {
        let max = self.max_message_bytes;
        RaftServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }
}

/// Decodes a request, runs it against raft, and encodes raft's `Result`.
async fn serve<Req, Resp, W, F, Fut>(
    rpc: RPCTypes,
    request: Request<RaftRequest>,
    handle: F,
) -> Result<Response<RaftResponse>, Status>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    W: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, W>>,
{
    let request = decode(rpc, &request.into_inner().payload).map_err(to_status)?;
    let result = handle(request).await;
    let payload = encode(rpc, &result).map_err(to_status)?;
    Ok(Response::new(RaftResponse {
        payload: Bytes::from(payload),
    }))
}

/// The `Fatal` inside an error of an RPC without API errors.
fn fatal(error: RaftError<u64>) -> Fatal<u64> {
    match error {
        RaftError::APIError(never) => match never {},
        RaftError::Fatal(fatal) => fatal,
    }
}

#[tonic::async_trait]
impl<C> RaftRpc for RaftService<C>
where
    C: RaftTypeConfig<NodeId = u64>,
{
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        serve(
            RPCTypes::AppendEntries,
            request,
            |rpc: AppendEntriesRequest<C>| async move {
                self.raft.append_entries(rpc).await.map_err(fatal)
            },
        )
        .await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        serve(
            RPCTypes::Vote,
            request,
            |rpc: VoteRequest<u64>| async move { self.raft.vote(rpc).await.map_err(fatal) },
        )
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        serve(
            RPCTypes::InstallSnapshot,
            request,
            |rpc: InstallSnapshotRequest<C>| async move { self.raft.install_snapshot(rpc).await },
        )
        .await
    }
}

/// The one mapping of the service's own failures to a gRPC status. A raft
/// refusal is never a status: it travels in the payload.
fn to_status(error: TransportError) -> Status {
    let code = match &error {
        TransportError::Decode { .. } => Code::InvalidArgument,
        TransportError::TooLarge { .. } => Code::ResourceExhausted,
        TransportError::Encode { .. }
        | TransportError::Address { .. }
        | TransportError::Status { .. } => Code::Internal,
    };
    Status::new(code, error.to_string())
}

fn encode<T: Serialize>(rpc: RPCTypes, value: &T) -> Result<Vec<u8>, TransportError> {
    postcard::to_allocvec(value).map_err(|source| TransportError::Encode { rpc, source })
}

fn decode<T: DeserializeOwned>(rpc: RPCTypes, payload: &[u8]) -> Result<T, TransportError> {
    postcard::from_bytes(payload).map_err(|source| TransportError::Decode { rpc, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_channel_dials_the_host_and_checks_it_as_an_address_or_a_dns_name() {
        use rustls::pki_types::{DnsName, ServerName};
        let target = |uri: &str| dial_target(&uri.parse::<Uri>().expect("a URI"));
        let (host, port, name) = target("http://[::1]:7170").expect("IPv6");
        assert_eq!((host.as_str(), port), ("::1", 7170));
        assert_eq!(
            name,
            ServerName::IpAddress("::1".parse::<std::net::IpAddr>().unwrap().into())
        );
        // The connector dials `(host, port)`: an IPv6 literal without
        // brackets is an address there too, not a name to resolve.
        assert!(std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).is_ok());
        let (host, port, name) = target("http://10.0.0.2:7171").expect("IPv4");
        assert_eq!((host.as_str(), port), ("10.0.0.2", 7171));
        assert_eq!(
            name,
            ServerName::IpAddress("10.0.0.2".parse::<std::net::IpAddr>().unwrap().into())
        );
        let (host, port, name) = target("http://node-2.cairn.lan:7172").expect("DNS");
        assert_eq!((host.as_str(), port), ("node-2.cairn.lan", 7172));
        assert_eq!(
            name,
            ServerName::DnsName(DnsName::try_from("node-2.cairn.lan").unwrap())
        );
        let refused = target("http://node-2.cairn.lan").expect_err("no port");
        assert!(refused.to_string().contains("has no port"), "{refused}");
    }

    fn decode_error() -> postcard::Error {
        decode::<u64>(RPCTypes::Vote, &[])
            .map_err(|e| match e {
                TransportError::Decode { source, .. } => source,
                other => panic!("expected a decode error, got {other}"),
            })
            .expect_err("an empty payload is no u64")
    }

    #[test]
    fn service_failures_map_to_statuses() {
        let decode = TransportError::Decode {
            rpc: RPCTypes::Vote,
            source: decode_error(),
        };
        assert_eq!(to_status(decode).code(), Code::InvalidArgument);
        let too_large = TransportError::TooLarge {
            rpc: RPCTypes::AppendEntries,
            actual: 10,
            limit: 5,
        };
        let status = to_status(too_large);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("max_message_bytes"), "{status:?}");
        let encode = TransportError::Encode {
            rpc: RPCTypes::Vote,
            source: decode_error(),
        };
        assert_eq!(to_status(encode).code(), Code::Internal);
    }

    #[test]
    fn unavailable_is_unreachable_and_other_statuses_are_network_errors() {
        let failure = status_failure(RPCTypes::Vote, Status::unavailable("connection refused"));
        assert!(matches!(failure, CallFailure::Unreachable(_)));
        let failure = status_failure(
            RPCTypes::AppendEntries,
            Status::out_of_range("decoded message length too large"),
        );
        assert!(matches!(failure, CallFailure::Network(_)));
        let failure = status_failure(RPCTypes::Vote, Status::invalid_argument("bad payload"));
        assert!(matches!(failure, CallFailure::Network(_)));
    }

    #[tokio::test]
    async fn a_route_replaces_the_membership_address_for_its_peer_only() {
        let mut factory =
            GrpcNetworkFactory::new(1, DEFAULT_MAX_MESSAGE_BYTES).with_routes(HashMap::from([
                (2, "127.0.0.1:7002".to_owned()),
                (4, "not a uri".to_owned()),
            ]));
        let published = Member::new("127.0.0.1:9", "127.0.0.1:7070", None);
        for peer in [2, 3] {
            let connection = RaftNetworkFactory::<crate::types::TypeConfig>::new_client(
                &mut factory,
                peer,
                &published,
            )
            .await;
            assert!(connection.client.is_ok(), "{:?}", connection.client);
            // Errors name the peer as the membership knows it.
            assert_eq!(connection.node, published);
        }
        // The cache holds each channel under the address it connects to.
        assert_eq!(factory.channels[&2].0, "127.0.0.1:7002");
        assert_eq!(factory.channels[&3].0, "127.0.0.1:9");
        let connection =
            RaftNetworkFactory::<crate::types::TypeConfig>::new_client(&mut factory, 4, &published)
                .await;
        match connection.client {
            Err(TransportError::Address {
                target: 4, addr, ..
            }) => assert_eq!(addr, "not a uri"),
            other => panic!("expected the route's address error, got {other:?}"),
        }
    }
}
