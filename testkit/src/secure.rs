//! The set-up of tests of access control: a secure server, its `admin`
//! client, the users a test logs in as, and ACLs on its streams.

use cairn_client::{Client, ExpectedRevision, NewUser, StreamMetadata};
use cairn_server::Settings;

use crate::{TestServer, TestTls};

/// The password of every user a [`SecureSetup`] creates (long enough for
/// the server's password rule).
pub const USER_PASSWORD: &str = "a long enough password";

/// An ACL (a stream's metadata `custom_json`, see [`set_acl`]) under which
/// only `alice` reads, writes and reads or writes the metadata, and nobody
/// deletes; admins may do everything all the same.
pub const ALICE_ONLY_ACL: &str =
    r#"{"$acl": {"$r": ["alice"], "$w": "alice", "$d": [], "$mr": ["alice"], "$mw": ["alice"]}}"#;

/// A secure server ([`TestServer::start_secure`]) with a client of its
/// `admin` user, who has created the users the test named, each with the
/// roles given and the password [`USER_PASSWORD`] (log in with
/// [`TestServer::connect_as`]).
///
/// Destructure it to keep both: `let SecureSetup { server, admin } = ...`.
pub struct SecureSetup {
    /// The server, with TLS and authentication on.
    pub server: TestServer,
    /// A client of the `admin` user ([`TestServer::admin`]).
    pub admin: Client,
}

impl SecureSetup {
    /// Starts a secure server and creates `users`: pairs of a name and its
    /// roles (`&[]` for a plain user), created in that order.
    pub async fn start(users: &[(&str, &[&str])]) -> Self {
        Self::start_with(|_, _| {}, users).await
    }

    /// [`SecureSetup::start`] after letting the caller adjust the settings,
    /// as [`TestServer::start_secure_with`] does.
    pub async fn start_with(
        adjust: impl FnOnce(&mut Settings, &TestTls),
        users: &[(&str, &[&str])],
    ) -> Self {
        let server = TestServer::start_secure_with(adjust).await;
        let admin = server.admin().await;
        for (user, roles) in users {
            admin
                .create_user(NewUser::new(*user, USER_PASSWORD).roles(roles.iter().copied()))
                .await
                .unwrap_or_else(|error| panic!("create user {user}: {error}"));
        }
        Self { server, admin }
    }
}

/// Sets `acl` (JSON with an `$acl` object, e.g. [`ALICE_ONLY_ACL`]) as the
/// custom metadata of `stream`, whatever its revision, as `admin`.
pub async fn set_acl(admin: &Client, stream: &str, acl: &str) {
    admin
        .set_stream_metadata(
            stream,
            ExpectedRevision::Any,
            StreamMetadata {
                custom_json: Some(acl.to_owned()),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap_or_else(|error| panic!("set the ACL of {stream}: {error}"));
}
