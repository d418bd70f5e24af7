//! Security: who a caller is (authentication: [`users`]) and what the caller
//! may do (authorization: [`acl`]). Every facade authenticates a call once, at
//! its boundary, into a [`Principal`], and hands that principal to the engine
//! with the call; the engine checks it before it acts, so a denied call
//! changes nothing and every facade enforces the same rules.
//!
//! With security disabled (`--insecure`: no TLS, no authentication, the
//! default on loopback) every caller is [`Principal::system`], which may do
//! everything. The server's own work (group actors, parked-event writes,
//! user records) also runs as the system principal.
//!
//! This module owns users, roles, tokens, credentials, ACL rules and the
//! checks. It must not name a wire type and never logs a credential.

pub mod acl;
pub mod users;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::{Error, Result};

/// A server-wide role. Every user may additionally be named in stream ACLs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: users, ACLs, every stream, groups, operations.
    Admin,
    /// Operations: consumer groups, scavenge, backups, every stream's reads;
    /// not users.
    Ops,
}

impl Role {
    /// The role's name in settings, ACLs (`$admins`, `$ops`) and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ops => "ops",
        }
    }

    /// The role named `name` (`admin`, `ops`).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "ops" => Some(Role::Ops),
            _ => None,
        }
    }
}

/// Who is calling: the system (insecure mode, the server's own work) or an
/// authenticated user with roles. Cheap to clone.
#[derive(Clone)]
pub struct Principal(Arc<Who>);

enum Who {
    System,
    User { name: String, roles: Vec<Role> },
}

impl Principal {
    /// The principal with every right: insecure mode and the server itself.
    pub fn system() -> Self {
        Principal(Arc::new(Who::System))
    }

    /// An authenticated user.
    pub fn user(name: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        let mut roles: Vec<Role> = roles.into_iter().collect();
        roles.sort();
        roles.dedup();
        Principal(Arc::new(Who::User {
            name: name.into(),
            roles,
        }))
    }

    /// The user's name; `$system` for the system principal.
    pub fn name(&self) -> &str {
        match &*self.0 {
            Who::System => "$system",
            Who::User { name, .. } => name,
        }
    }

    /// True for the system principal.
    pub fn is_system(&self) -> bool {
        matches!(&*self.0, Who::System)
    }

    /// The user's roles (none for the system principal, which needs none).
    pub fn roles(&self) -> &[Role] {
        match &*self.0 {
            Who::System => &[],
            Who::User { roles, .. } => roles,
        }
    }

    /// True when the principal is the system or holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.is_system() || self.roles().contains(&role)
    }

    /// True for the system and for admins: they may do everything.
    pub fn is_admin(&self) -> bool {
        self.has_role(Role::Admin)
    }

    /// Ok when the principal holds one of `roles` (admins and the system
    /// always do); else [`Error::PermissionDenied`] naming `operation`.
    pub fn require_any(&self, roles: &[Role], operation: &str) -> Result<()> {
        if self.is_admin() || roles.iter().any(|role| self.has_role(*role)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                operation: operation.to_owned(),
                stream: None,
            })
        }
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Who::System => formatter.write_str("Principal(system)"),
            Who::User { name, roles } => formatter
                .debug_struct("Principal")
                .field("name", name)
                .field("roles", roles)
                .finish(),
        }
    }
}

/// What a caller presents. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (HTTP Basic).
    Basic {
        /// The user.
        user: String,
        /// The password, in clear (only ever compared against its hash).
        password: String,
    },
    /// An opaque bearer token issued by the server.
    Bearer(String),
}

/// Longest `authorization` value looked at; longer ones are refused unread.
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

impl Credentials {
    /// The credentials of an HTTP/gRPC `authorization` value: `Basic
    /// base64(user:password)` or `Bearer token` (scheme names are
    /// case-insensitive). Anything else, or a value over
    /// [`MAX_AUTHORIZATION_BYTES`], is [`Error::Unauthenticated`]; the error
    /// never repeats the value.
    pub fn from_authorization(value: &[u8]) -> Result<Credentials> {
        use base64::Engine as _;
        let malformed =
            || Error::Unauthenticated("the authorization metadata is not Basic or Bearer".into());
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(Error::Unauthenticated(
                "the authorization metadata is too long".into(),
            ));
        }
        let value = std::str::from_utf8(value).map_err(|_| malformed())?.trim();
        let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| malformed())?;
            let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
            let (user, password) = decoded.split_once(':').ok_or_else(malformed)?;
            Ok(Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            Ok(Credentials::Bearer(rest.to_owned()))
        } else {
            Err(malformed())
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => formatter
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => formatter.write_str("Bearer(<redacted>)"),
        }
    }
}

/// How the engine's security is set up.
#[derive(Debug, Clone, Default)]
pub struct SecurityOptions {
    /// False in insecure mode: every caller is [`Principal::system`].
    pub enabled: bool,
    /// Password of the `admin` user created on the first secure start when
    /// no user exists. `None`: a random one is generated and written to
    /// `bootstrap_file` (readable by the server's user only).
    pub initial_admin_password: Option<String>,
    /// Where a generated first password is written.
    pub bootstrap_file: Option<std::path::PathBuf>,
    /// The server-wide default ACLs.
    pub defaults: acl::DefaultAcls,
}

/// Authentication and authorization, shared by every facade.
pub struct Security {
    /// False in insecure mode.
    enabled: bool,
    /// Users and tokens.
    users: users::Users,
    /// ACL decisions.
    authorizer: Arc<acl::Authorizer>,
    /// What the start was given: a cluster's leader bootstraps with it.
    options: SecurityOptions,
}

impl Security {
    /// Security over `store` as `options` say: loads users and tokens
    /// (creating the first admin on a first secure start).
    pub(crate) async fn start(
        store: &cairn_storage::Store,
        options: SecurityOptions,
    ) -> Result<Self> {
        let users = users::Users::load(store, &options).await?;
        Ok(Self {
            enabled: options.enabled,
            authorizer: Arc::new(acl::Authorizer::new(
                store.clone(),
                options.defaults.clone(),
                options.enabled,
            )),
            users,
            options,
        })
    }

    /// Cluster mode: what the node just elected leader does for security
    /// before it is trusted to have done it (see [`users::Users::lead`]);
    /// nothing in insecure mode. Call again after an error while leading.
    pub async fn lead(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.users.lead(&self.options).await
    }

    /// Cluster mode: brings the user registry up to this node's store
    /// ([`users::Users::catch_up`]); every node, leader or follower, calls it
    /// every role poll.
    pub async fn catch_up(&self) -> Result<()> {
        self.users.catch_up().await
    }

    /// True unless the server runs in insecure mode.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents `credentials` from `source`. Insecure mode: always the
    /// system principal. Secure mode: [`Error::Unauthenticated`] without
    /// credentials, with wrong ones, for a disabled user, an expired or
    /// revoked token, or a source with too many recent failures.
    pub async fn authenticate(
        &self,
        credentials: Option<Credentials>,
        source: Option<IpAddr>,
    ) -> Result<Principal> {
        if !self.enabled {
            return Ok(Principal::system());
        }
        let Some(credentials) = credentials else {
            return Err(Error::Unauthenticated(
                "this server requires credentials: a user and password (basic) or a bearer token"
                    .into(),
            ));
        };
        self.users.authenticate(credentials, source).await
    }

    /// Users and tokens (management).
    pub fn users(&self) -> &users::Users {
        &self.users
    }

    /// Stream access decisions.
    pub fn authorizer(&self) -> &Arc<acl::Authorizer> {
        &self.authorizer
    }
}
