//! `cairn-proto`: Cairn's native gRPC protocol, generated from
//! `proto/cairn/v1/cairn.proto` at build time (protox; no system protoc).
//!
//! The server implements the `*_server` traits, the client uses the `*_client`
//! stubs; both share these message types. `FILE_DESCRIPTOR_SET` feeds server
//! reflection so grpcurl needs no .proto files.
//!
//! ```
//! use cairn_proto::v1::{ExpectedRevision, expected_revision::Kind};
//! let exact = ExpectedRevision { kind: Some(Kind::Exact(3)) };
//! assert_eq!(exact.kind, Some(Kind::Exact(3)));
//! ```

/// The `cairn.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

/// Encoded `FileDescriptorSet` of every Cairn .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));
