//! Compiles `cairn/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed), generates prost messages and tonic stubs, and saves
//! the encoded file descriptor set for server reflection. Then the same for the
//! KurrentDB client contract in `kurrent/*.proto` (a separate set: its files
//! import each other by bare name, and its descriptors are not Cairn's API).
//! Last the node-to-node raft service `cairn/cluster/v1/raft.proto`, also a
//! set of its own so that it stays out of the reflection descriptors: it is
//! served only on the cluster listener and is no client's API. (The admin
//! `cairn.v1.Cluster` service, `cairn/v1/cluster.proto`, is client API: it
//! is one of the `cairn/v1` files, in the reflection set.)

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "cairn/v1/cairn.proto",
        "cairn/v1/subscriptions.proto",
        "cairn/v1/persistent.proto",
        "cairn/v1/users.proto",
        "cairn/v1/operations.proto",
        "cairn/v1/cluster.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cairn_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;

    let kurrent = [
        "shared.proto",
        "code.proto",
        "status.proto",
        "streams.proto",
        "gossip.proto",
        "serverfeatures.proto",
        "persistent.proto",
        "operations.proto",
    ];
    for proto in kurrent {
        println!("cargo:rerun-if-changed=kurrent/{proto}");
    }
    let kurrent_descriptors = protox::compile(kurrent, ["kurrent"])?;
    std::fs::write(
        out_dir.join("kurrent_descriptor.bin"),
        kurrent_descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(kurrent_descriptors)?;

    let cluster = "cairn/cluster/v1/raft.proto";
    println!("cargo:rerun-if-changed={cluster}");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(protox::compile([cluster], ["."])?)?;
    Ok(())
}
