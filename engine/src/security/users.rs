//! Users and tokens: who may log in, with which roles, and how a login is
//! checked.
//!
//! This module holds [`Users`] (logins and management, with every
//! permission check); `records` owns the JSON records, `state` folds them
//! into memory, `secrets` hashes passwords and makes tokens, and `limiter`
//! counts failed logins per source (sans I/O).
//!
//! # Storage
//!
//! The server keeps users and tokens in two system streams of its own store,
//! folded in order into memory at start ([`Users::open`]); every change is
//! appended first, with the stream's expected revision (changes are also
//! serialised by a lock, so two admin calls cannot interleave), and applied
//! to memory only once the append is acknowledged. Both streams carry an
//! explicit `$acl` that admits admins only, whatever the server-wide
//! defaults for `$`-streams say. Each event is a JSON object with a
//! `version` (now 1; a newer one is refused at start) and a `record` kind:
//!
//! `$sys-users` (event types `UserCreated`, `UserUpdated`,
//! `UserPasswordChanged`, `UserDisabled`, `UserEnabled`, `UserDeleted`):
//!
//! ```json
//! {"version":1,"record":"created","user":"alice","id":"5b1c…","full_name":"Alice",
//!  "roles":["ops"],"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$…","at_ms":1767225600000,"by":"admin"}
//! {"version":1,"record":"updated","user":"alice","id":"5b1c…","full_name":"Alice A.","roles":[],"at_ms":…,"by":"admin"}
//! {"version":1,"record":"password_changed","user":"alice","id":"5b1c…","password_hash":"$argon2id$…","at_ms":…,"by":"alice"}
//! {"version":1,"record":"disabled","user":"alice","id":"5b1c…","at_ms":…,"by":"admin"}
//! {"version":1,"record":"enabled","user":"alice","id":"5b1c…","at_ms":…,"by":"admin"}
//! {"version":1,"record":"deleted","user":"alice","id":"5b1c…","at_ms":…,"by":"admin"}
//! ```
//!
//! `id` is fixed when the user is created: a user deleted and created again
//! under the same name is another user, and the old one's tokens stay dead.
//!
//! `$sys-tokens` (event types `TokenIssued`, `TokenRevoked`); `hash` is the
//! hex SHA-256 of the token's text, the only trace of the secret:
//!
//! ```json
//! {"version":1,"record":"issued","id":"9f2c4e1a0b7d3c55","user":"alice","user_id":"5b1c…",
//!  "name":"ci","hash":"3a7b…","created_ms":…,"expires_ms":null,"by":"alice"}
//! {"version":1,"record":"revoked","id":"9f2c4e1a0b7d3c55","user":"alice","at_ms":…,"by":"admin"}
//! ```
//!
//! Tokens of deleted users and expired tokens are dropped from memory at
//! start (their records stay in the stream).
//!
//! # Logins
//!
//! - Basic (user and password): the password is checked against its Argon2id
//!   hash on the blocking pool, a few at a time (each check holds 19 MiB). A
//!   success is remembered in a bounded cache keyed by a SHA-256 of a
//!   per-process random key, the user and the password, and tied to the
//!   user's current version: any change of the user (password, roles,
//!   disabled, deleted) invalidates it. An unknown user costs as much as a
//!   wrong password, and both get the same answer.
//! - Bearer tokens (`cairn_` and 43 characters): looked up by hash; an
//!   expired or revoked token, or one whose user is disabled or deleted, is
//!   refused. The token's roles are its user's at the time of use.
//! - Failures are counted per source address (see `limiter`): after 5 within
//!   a minute, that source is refused for a growing while without its
//!   credentials even being checked. Failures are logged at info with the
//!   user name (escaped) and the source; a password or token never is.
//!
//! # Bootstrap
//!
//! On a secure start with no user at all, `admin` (role admin) is created
//! with `initial_admin_password`, or else with a random password written to
//! `bootstrap_file` (default `<data>/initial-admin-password`, mode 0600) and one
//! warning naming that file. There is no built-in password. In insecure mode
//! users are loaded (and can be managed by the system principal) but no one
//! is created.

mod limiter;
mod records;
mod secrets;
mod state;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use cairn_storage::{EventData, ExpectedRevision, Store, StreamMetadata};
use tokio::sync::Semaphore;

use super::{Credentials, Principal, Role, SecurityOptions};
use crate::{Error, Escaped, Result};

use limiter::LoginLimiter;
use records::{Stored, TokenRecord, UserRecord};
use state::{State, now_ms, restore, sorted};

pub use records::{TOKENS_STREAM, USERS_STREAM};
pub use secrets::TOKEN_PREFIX;

/// The user created on the first secure start.
pub const BOOTSTRAP_USER: &str = "admin";
/// Where a generated first password goes when `bootstrap_file` is not set,
/// relative to the data directory.
pub const DEFAULT_BOOTSTRAP_FILE: &str = "initial-admin-password";
/// The longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 128;
/// The shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The longest full name, in bytes.
pub const MAX_FULL_NAME_BYTES: usize = 1024;
/// The longest token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 256;
/// The longest token lifetime.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// What every admin-only refusal names.
const MANAGE_USERS: &str = "manage users";
/// The `$acl` of both streams: empty lists admit admins only.
const ADMINS_ONLY_ACL: &str = r#"{"$acl":{"$r":[],"$w":[],"$d":[],"$mr":[],"$mw":[]}}"#;

/// How much the user registry holds at most.
#[derive(Debug, Clone, Copy)]
pub struct UserLimits {
    /// Users, disabled ones included. Default 10,000.
    pub max_users: usize,
    /// Unexpired tokens of one user. Default 100.
    pub max_tokens_per_user: usize,
    /// Sources whose failed logins are tracked. Default 10,000.
    pub max_login_sources: usize,
    /// Successful logins remembered. Default 10,000.
    pub login_cache_entries: usize,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            max_users: 10_000,
            max_tokens_per_user: 100,
            max_login_sources: 10_000,
            login_cache_entries: 10_000,
        }
    }
}

/// A user to create.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    /// 1..=128 bytes, no control characters or `:`, not starting with `$`,
    /// no leading or trailing spaces.
    pub name: String,
    /// Free text, at most 1 KiB.
    pub full_name: String,
    /// At least 8 characters, at most 1 KiB.
    pub password: String,
    /// Server-wide roles (none: a plain user).
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewUser")
            .field("name", &self.name)
            .field("full_name", &self.full_name)
            .field("password", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

/// A change of a user's full name and roles; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// The new full name.
    pub full_name: Option<String>,
    /// The new roles (the whole set).
    pub roles: Option<Vec<Role>>,
}

/// What may be shown of a user (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDetails {
    /// The user name.
    pub name: String,
    /// The full name.
    pub full_name: String,
    /// Its roles, sorted.
    pub roles: Vec<Role>,
    /// True when it may not log in.
    pub disabled: bool,
    /// When it was created.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
}

/// A token to issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewToken {
    /// Whose token: `None` for the caller itself. Admins may name anyone.
    pub user: Option<String>,
    /// A name or description for lists (e.g. the service using it); at most
    /// 256 bytes.
    pub name: String,
    /// How long it is valid; `None`: until revoked.
    pub expires_in: Option<Duration>,
}

/// What may be shown of a token (never the secret, never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDetails {
    /// The token's public id (to list and revoke it).
    pub id: String,
    /// Its user.
    pub user: String,
    /// Its name.
    pub name: String,
    /// When it was issued.
    pub created: SystemTime,
    /// When it stops working, if ever.
    pub expires: Option<SystemTime>,
    /// True when `expires` has passed.
    pub expired: bool,
}

/// A token just issued: the only time its secret is known to anyone.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// What lists will show of it.
    pub details: TokenDetails,
    /// The token itself (`cairn_...`), to hand to the client once.
    pub token: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IssuedToken")
            .field("details", &self.details)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a login failed: the message the client gets and the reason logged.
enum Failure {
    WrongPassword,
    Disabled,
    TokenUnknown,
    TokenExpired(String),
    TokenUserDisabled(String),
    /// Not the caller's fault (a failed task): not counted, returned as is.
    Internal(Error),
}

impl Failure {
    fn message(&self, user: Option<&str>) -> String {
        match self {
            Failure::WrongPassword => "wrong user name or password".into(),
            Failure::Disabled => format!(
                "user '{}' is disabled; ask an admin to enable it",
                user.unwrap_or_default()
            ),
            Failure::TokenUnknown => "the token is not valid (unknown or revoked)".into(),
            Failure::TokenExpired(_) => "the token has expired; create a new one".into(),
            Failure::TokenUserDisabled(_) => {
                "the token's user is disabled; ask an admin to enable it".into()
            }
            Failure::Internal(error) => error.to_string(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Failure::WrongPassword => "wrong user or password",
            Failure::Disabled => "user disabled",
            Failure::TokenUnknown => "unknown or revoked token",
            Failure::TokenExpired(_) => "token expired",
            Failure::TokenUserDisabled(_) => "token of a disabled user",
            Failure::Internal(_) => "internal error",
        }
    }

    fn token_id(&self) -> Option<&str> {
        match self {
            Failure::TokenExpired(id) | Failure::TokenUserDisabled(id) => Some(id),
            _ => None,
        }
    }
}

/// Successful logins: login key -> (user, generation when it succeeded).
struct LoginCache {
    entries: HashMap<[u8; 32], (String, u64)>,
    capacity: usize,
}

impl LoginCache {
    fn hit(&self, key: &[u8; 32], user: &str, generation: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|(cached_user, cached)| cached_user == user && *cached == generation)
    }

    fn insert(&mut self, key: [u8; 32], user: &str, generation: u64) {
        if self.entries.len() >= self.capacity {
            // Starting over is as good as any eviction here: a miss costs
            // one password check.
            self.entries.clear();
        }
        self.entries.insert(key, (user.to_owned(), generation));
    }

    fn forget(&mut self, user: &str) {
        self.entries
            .retain(|_, (cached_user, _)| cached_user != user);
    }
}

/// Users and tokens: logins and their management. One per engine.
pub struct Users {
    /// Where the records live.
    store: Store,
    /// Bounds.
    limits: UserLimits,
    /// The folded records. Never held across an await.
    state: RwLock<State>,
    /// Serialises changes: validate, append, apply.
    changes: tokio::sync::Mutex<()>,
    /// Successful logins, so basic auth on every call does not run Argon2 on
    /// every call.
    logins: Mutex<LoginCache>,
    /// Failed logins per source.
    limiter: Mutex<LoginLimiter>,
    /// Password hashing at once (each holds 19 MiB and a core for tens of ms):
    /// a flood of logins queues here instead of exhausting memory.
    hashing: Arc<Semaphore>,
    /// Keys the login cache; new in every process.
    process_key: [u8; 32],
}

impl Users {
    /// Loads users and tokens from `store`, creating the first admin on a
    /// first secure start (see the module docs).
    pub(crate) async fn load(store: &Store, options: &SecurityOptions) -> Result<Self> {
        Self::open(store, options, UserLimits::default()).await
    }

    /// Loads users and tokens from `store` with explicit limits, creating the
    /// first admin on a first secure start (see the module docs).
    pub async fn open(
        store: &Store,
        options: &SecurityOptions,
        limits: UserLimits,
    ) -> Result<Self> {
        let reading = store.clone();
        let state = tokio::task::spawn_blocking(move || restore(&reading))
            .await
            .map_err(|error| Error::Internal(format!("loading users failed: {error}")))??;
        let hashers = std::thread::available_parallelism().map_or(2, usize::from);
        let users = Self {
            store: store.clone(),
            limits,
            state: RwLock::new(state),
            changes: tokio::sync::Mutex::new(()),
            logins: Mutex::new(LoginCache {
                entries: HashMap::new(),
                capacity: limits.login_cache_entries.max(1),
            }),
            limiter: Mutex::new(LoginLimiter::new(limits.max_login_sources)),
            hashing: Arc::new(Semaphore::new(hashers)),
            process_key: secrets::random_bytes()?,
        };
        if options.enabled && store.is_clustered() {
            // Only the leader writes: it protects the streams and creates
            // the first admin when it is elected (`Users::lead`).
            if users.read().users.is_empty() {
                tracing::info!(
                    "no users yet: the first node elected leader creates the first admin"
                );
            }
        } else if options.enabled {
            users.set_up(options).await?;
        }
        Ok(users)
    }

    /// What the one writer of the registry does before serving a secure
    /// server: the admins-only ACLs on both streams, and the first admin when
    /// there is no user at all.
    async fn set_up(&self, options: &SecurityOptions) -> Result<()> {
        self.protect_streams().await;
        if self.read().users.is_empty() {
            self.bootstrap(options).await
        } else {
            if options.initial_admin_password.is_some() {
                tracing::info!("users exist already; initial_admin_password is not used");
            }
            Ok(())
        }
    }

    /// Cluster mode, on the node that has just been elected leader (the only
    /// one whose appends are accepted): folds what it has not applied yet,
    /// then does what a single node does at a secure start
    /// (see the module docs, "Bootstrap"). Two leaders of successive terms
    /// cannot both create the first admin: the record is appended expecting
    /// no stream. An error (leadership lost meanwhile, say) leaves the
    /// registry as it was; the caller tries again while it leads.
    pub async fn lead(&self, options: &SecurityOptions) -> Result<()> {
        // Not under `changes`: the bootstrap's `create_user` takes it (and
        // catches up, and refuses on a follower, again).
        self.catch_up().await?;
        if let Some(refusal) = self.store.write_refusal() {
            return Err(refusal.into());
        }
        self.set_up(options).await
    }

    /// Cluster mode: folds the records that reached this node's store from
    /// elsewhere since the last ones applied (appended through the leader
    /// and replicated here, or installed with a snapshot), and forgets the
    /// cached logins of every user they changed. Two catalog lookups when
    /// nothing is new. Until it runs, a change made through another node is
    /// not seen here: the engine calls it every `ROLE_POLL` (100 ms).
    pub async fn catch_up(&self) -> Result<()> {
        let _change = self.changes.lock().await;
        self.catch_up_holding_changes().await
    }

    /// [`Users::catch_up`] by a caller that holds `changes`, so no change of
    /// this registry runs meanwhile.
    async fn catch_up_holding_changes(&self) -> Result<()> {
        let (users_after, tokens_after) = {
            let state = self.read();
            (state.users_revision, state.tokens_revision)
        };
        let head = |stream: &str| {
            self.store
                .stream_info(stream)
                .and_then(|info| info.last_revision)
        };
        if head(USERS_STREAM) == users_after && head(TOKENS_STREAM) == tokens_after {
            return Ok(());
        }
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || {
            state::read_after(&store, users_after, tokens_after)
        })
        .await
        .map_err(|error| Error::Internal(format!("reading user records failed: {error}")))??;
        let touched = self.write().apply_records(records)?;
        let mut logins = self.logins();
        for user in touched {
            logins.forget(&user);
        }
        Ok(())
    }

    /// Takes the lock that serialises changes of the registry. In cluster
    /// mode it first refuses on a follower (the store's `NotLeader`, naming
    /// the leader) and folds what other nodes wrote, so the checks of the
    /// change see the registry as the leader's log has it.
    async fn begin_change(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let change = self.changes.lock().await;
        if self.store.is_clustered() {
            if let Some(refusal) = self.store.write_refusal() {
                return Err(refusal.into());
            }
            self.catch_up_holding_changes().await?;
        }
        Ok(change)
    }

    /// Who presents `credentials` from `source`: the user with its roles,
    /// else [`Error::Unauthenticated`] (wrong or unknown credentials, a
    /// disabled user, an expired or revoked token, a blocked source).
    pub async fn authenticate(
        &self,
        credentials: Credentials,
        source: Option<IpAddr>,
    ) -> Result<Principal> {
        if let Err(wait) = self.limiter().check(source, Instant::now()) {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Error::Unauthenticated(format!(
                "too many failed logins from this address; wait {seconds} s"
            )));
        }
        let (outcome, user) = match &credentials {
            Credentials::Basic { user, password } => {
                (self.login(user, password).await, Some(user.as_str()))
            }
            Credentials::Bearer(token) => (self.token_login(token), None),
        };
        let failure = match outcome {
            Ok(principal) => {
                self.limiter().success(source);
                return Ok(principal);
            }
            Err(Failure::Internal(error)) => return Err(error),
            Err(failure) => failure,
        };
        let blocked = self.limiter().failure(source, Instant::now());
        match user {
            Some(user) => tracing::info!(
                user = %Escaped(user),
                source = ?source,
                reason = failure.reason(),
                "login failed"
            ),
            None => tracing::info!(
                token = failure.token_id().unwrap_or("-"),
                source = ?source,
                reason = failure.reason(),
                "token login failed"
            ),
        }
        if let Some(block) = blocked {
            tracing::warn!(source = ?source, seconds = block.as_secs(), "too many failed logins; refusing this source for a while");
        }
        Err(Error::Unauthenticated(failure.message(user)))
    }

    /// Creates a user (admin).
    pub async fn create_user(&self, by: &Principal, new: NewUser) -> Result<UserDetails> {
        by.require_any(&[], MANAGE_USERS)?;
        validate_user_name(&new.name)?;
        validate_full_name(&new.full_name)?;
        validate_password(&new.password)?;
        let password_hash = self.hash(new.password).await?;
        let _change = self.begin_change().await?;
        {
            let state = self.read();
            if state.users.contains_key(&new.name) {
                return Err(Error::UserExists { user: new.name });
            }
            if state.users.len() >= self.limits.max_users {
                return Err(Error::LimitExceeded(format!(
                    "the server already has {} users (its limit); delete one first",
                    self.limits.max_users
                )));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.write_user(UserRecord::Created {
            user: new.name.clone(),
            id,
            full_name: new.full_name,
            roles: sorted(&new.roles),
            password_hash,
            at_ms: now_ms(),
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(&new.name), by = %Escaped(by.name()), "user created");
        self.read().details(&new.name)
    }

    /// Deletes a user and every token issued to it (admin; never the last
    /// enabled admin).
    pub async fn delete_user(&self, by: &Principal, name: &str) -> Result<()> {
        by.require_any(&[], MANAGE_USERS)?;
        let _change = self.begin_change().await?;
        let id = {
            let state = self.read();
            let id = state.user(name)?.id.clone();
            state.keep_an_admin(name, "delete")?;
            id
        };
        self.write_user(UserRecord::Deleted {
            user: name.to_owned(),
            id,
            at_ms: now_ms(),
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(name), by = %Escaped(by.name()), "user deleted");
        Ok(())
    }

    /// Disables a user: its passwords and tokens stop working (admin; never
    /// the last enabled admin). Disabling a disabled user changes nothing.
    pub async fn disable_user(&self, by: &Principal, name: &str) -> Result<()> {
        self.set_disabled(by, name, true).await
    }

    /// Enables a disabled user (admin).
    pub async fn enable_user(&self, by: &Principal, name: &str) -> Result<()> {
        self.set_disabled(by, name, false).await
    }

    async fn set_disabled(&self, by: &Principal, name: &str, disabled: bool) -> Result<()> {
        by.require_any(&[], MANAGE_USERS)?;
        let _change = self.begin_change().await?;
        let id = {
            let state = self.read();
            let user = state.user(name)?;
            if user.disabled == disabled {
                return Ok(());
            }
            if disabled {
                state.keep_an_admin(name, "disable")?;
            }
            user.id.clone()
        };
        let (user, at_ms, by_name) = (name.to_owned(), now_ms(), by.name().to_owned());
        let record = if disabled {
            UserRecord::Disabled {
                user,
                id,
                at_ms,
                by: by_name,
            }
        } else {
            UserRecord::Enabled {
                user,
                id,
                at_ms,
                by: by_name,
            }
        };
        self.write_user(record).await?;
        let what = if disabled {
            "user disabled"
        } else {
            "user enabled"
        };
        tracing::info!(user = %Escaped(name), by = %Escaped(by.name()), "{what}");
        Ok(())
    }

    /// Changes a user's full name and roles (admin; the last enabled admin
    /// keeps its admin role).
    pub async fn update_user(
        &self,
        by: &Principal,
        name: &str,
        update: UserUpdate,
    ) -> Result<UserDetails> {
        by.require_any(&[], MANAGE_USERS)?;
        if let Some(full_name) = &update.full_name {
            validate_full_name(full_name)?;
        }
        let _change = self.begin_change().await?;
        let (id, full_name, roles) = {
            let state = self.read();
            let user = state.user(name)?;
            let roles = update
                .roles
                .as_deref()
                .map_or_else(|| user.roles.clone(), sorted);
            if !roles.contains(&Role::Admin) {
                state.keep_an_admin(name, "remove the admin role from")?;
            }
            let full_name = update.full_name.unwrap_or_else(|| user.full_name.clone());
            (user.id.clone(), full_name, roles)
        };
        self.write_user(UserRecord::Updated {
            user: name.to_owned(),
            id,
            full_name,
            roles,
            at_ms: now_ms(),
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(name), by = %Escaped(by.name()), "user updated");
        self.read().details(name)
    }

    /// Changes `name`'s password, given its current one: the user itself (or
    /// the system principal). Admins reset other users' passwords with
    /// [`Users::reset_password`].
    pub async fn change_password(
        &self,
        by: &Principal,
        name: &str,
        current: &str,
        new: &str,
    ) -> Result<()> {
        if !by.is_system() && by.name() != name {
            return Err(Error::PermissionDenied {
                operation: "change another user's password (admins reset it)".into(),
                stream: None,
            });
        }
        validate_password(new)?;
        let (hash, generation) = {
            let state = self.read();
            let user = state.user(name)?;
            (user.password_hash.clone(), user.generation)
        };
        let current = current.to_owned();
        if !self
            .blocking(move || secrets::verify_password(&current, &hash))
            .await?
        {
            return Err(Error::InvalidArgument(
                "the current password is wrong; nothing was changed".into(),
            ));
        }
        let password_hash = self.hash(new.to_owned()).await?;
        let _change = self.begin_change().await?;
        let id = {
            let state = self.read();
            let user = state.user(name)?;
            if user.generation != generation {
                return Err(Error::InvalidArgument(format!(
                    "user '{name}' changed meanwhile; nothing was changed, try again"
                )));
            }
            user.id.clone()
        };
        self.write_password(by, name, id, password_hash).await
    }

    /// Sets `name`'s password without the current one (admin).
    pub async fn reset_password(&self, by: &Principal, name: &str, new: &str) -> Result<()> {
        by.require_any(&[], MANAGE_USERS)?;
        validate_password(new)?;
        self.read().user(name)?;
        let password_hash = self.hash(new.to_owned()).await?;
        let _change = self.begin_change().await?;
        let id = self.read().user(name)?.id.clone();
        self.write_password(by, name, id, password_hash).await
    }

    async fn write_password(
        &self,
        by: &Principal,
        name: &str,
        id: String,
        password_hash: String,
    ) -> Result<()> {
        self.write_user(UserRecord::PasswordChanged {
            user: name.to_owned(),
            id,
            password_hash,
            at_ms: now_ms(),
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(name), by = %Escaped(by.name()), "password changed");
        Ok(())
    }

    /// Every user, by name (admin).
    pub fn list_users(&self, by: &Principal) -> Result<Vec<UserDetails>> {
        by.require_any(&[], MANAGE_USERS)?;
        let state = self.read();
        state.users.keys().map(|name| state.details(name)).collect()
    }

    /// One user (admin, or the user itself).
    pub fn user_details(&self, by: &Principal, name: &str) -> Result<UserDetails> {
        require_self_or_admin(by, name)?;
        self.read().details(name)
    }

    /// Issues a token for the caller, or (admin) for any user. The secret is
    /// in the result and nowhere else.
    pub async fn create_token(&self, by: &Principal, new: NewToken) -> Result<IssuedToken> {
        let user = match new.user {
            Some(user) => user,
            None if by.is_system() => {
                return Err(Error::InvalidArgument(
                    "name the user the token is for".into(),
                ));
            }
            None => by.name().to_owned(),
        };
        require_self_or_admin(by, &user)?;
        if new.name.len() > MAX_TOKEN_NAME_BYTES {
            return Err(Error::LimitExceeded(format!(
                "a token name is {} bytes, the limit is {MAX_TOKEN_NAME_BYTES}",
                new.name.len()
            )));
        }
        if new.name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "a token name may not hold control characters".into(),
            ));
        }
        if let Some(lifetime) = new.expires_in
            && (lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME)
        {
            return Err(Error::InvalidArgument(
                "a token's lifetime must be more than zero and at most 100 years".into(),
            ));
        }
        let _change = self.begin_change().await?;
        let created_ms = now_ms();
        let user_id = {
            let mut state = self.write();
            let entry = state.user(&user)?;
            if entry.disabled {
                return Err(Error::InvalidArgument(format!(
                    "user '{user}' is disabled; enable it first"
                )));
            }
            let user_id = entry.id.clone();
            state.prune_expired(&user, created_ms);
            let held = state
                .tokens
                .values()
                .filter(|token| token.user == user)
                .count();
            if held >= self.limits.max_tokens_per_user {
                return Err(Error::LimitExceeded(format!(
                    "user '{user}' already has {held} tokens (the limit); revoke one first"
                )));
            }
            user_id
        };
        let token = secrets::generate_token()?;
        let id = loop {
            let id = secrets::generate_token_id()?;
            if !self.read().tokens.contains_key(&id) {
                break id;
            }
        };
        let expires_ms = new
            .expires_in
            .map(|lifetime| created_ms.saturating_add(lifetime.as_millis() as u64));
        self.write_token(TokenRecord::Issued {
            id: id.clone(),
            user: user.clone(),
            user_id,
            name: new.name,
            hash: secrets::hex(&secrets::token_hash(&token)),
            created_ms,
            expires_ms,
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(&user), token = %id, by = %Escaped(by.name()), "token issued");
        let details = {
            let state = self.read();
            let stored = state
                .tokens
                .get(&id)
                .ok_or_else(|| Error::Internal("an issued token is missing".into()))?;
            stored.details(&id, now_ms())
        };
        Ok(IssuedToken { details, token })
    }

    /// Tokens (never their secrets): `user`'s (itself or admin), or with
    /// `None` the caller's own, or every token for an admin.
    pub fn list_tokens(&self, by: &Principal, user: Option<&str>) -> Result<Vec<TokenDetails>> {
        let user = match user {
            Some(user) => {
                require_self_or_admin(by, user)?;
                Some(user)
            }
            None if by.is_admin() => None,
            None => Some(by.name()),
        };
        let now = now_ms();
        let state = self.read();
        if let Some(user) = user {
            state.user(user)?;
        }
        let mut tokens: Vec<TokenDetails> = state
            .tokens
            .iter()
            .filter(|(_, token)| user.is_none_or(|user| token.user == user))
            .map(|(id, token)| token.details(id, now))
            .collect();
        tokens.sort_by(|a, b| (&a.user, a.created, &a.id).cmp(&(&b.user, b.created, &b.id)));
        Ok(tokens)
    }

    /// Revokes a token: the caller's own, or any (admin).
    pub async fn revoke_token(&self, by: &Principal, id: &str) -> Result<()> {
        let _change = self.begin_change().await?;
        let user = {
            let state = self.read();
            let token = state
                .tokens
                .get(id)
                .ok_or_else(|| Error::TokenNotFound { id: id.to_owned() })?;
            token.user.clone()
        };
        require_self_or_admin(by, &user)?;
        self.write_token(TokenRecord::Revoked {
            id: id.to_owned(),
            user: user.clone(),
            at_ms: now_ms(),
            by: by.name().to_owned(),
        })
        .await?;
        tracing::info!(user = %Escaped(&user), token = %Escaped(id), by = %Escaped(by.name()), "token revoked");
        Ok(())
    }

    /// Checks a user and password.
    async fn login(&self, name: &str, password: &str) -> std::result::Result<Principal, Failure> {
        let key = secrets::login_key(&self.process_key, name, password);
        // A change of the user while its password is checked means the check
        // was against an old version: check again (a few times at most).
        for _ in 0..3 {
            let found = self
                .read()
                .users
                .get(name)
                .map(|user| (user.generation, user.disabled, user.roles.clone()));
            let Some((generation, disabled, roles)) = found else {
                let password = password.to_owned();
                self.blocking(move || secrets::verify_nothing(&password))
                    .await
                    .map_err(Failure::Internal)?;
                return Err(Failure::WrongPassword);
            };
            if !self.logins().hit(&key, name, generation) {
                let Some(hash) = self
                    .read()
                    .users
                    .get(name)
                    .filter(|user| user.generation == generation)
                    .map(|user| user.password_hash.clone())
                else {
                    continue;
                };
                let password = password.to_owned();
                let matches = self
                    .blocking(move || secrets::verify_password(&password, &hash))
                    .await
                    .map_err(Failure::Internal)?;
                if !matches {
                    return Err(Failure::WrongPassword);
                }
                let current = self.read().users.get(name).map(|now| now.generation);
                if current != Some(generation) {
                    continue;
                }
                self.logins().insert(key, name, generation);
            }
            if disabled {
                return Err(Failure::Disabled);
            }
            return Ok(Principal::user(name, roles));
        }
        Err(Failure::Internal(Error::Internal(format!(
            "user '{name}' kept changing during the login; try again"
        ))))
    }

    /// Checks a bearer token (cheap: a hash and a lookup).
    fn token_login(&self, token: &str) -> std::result::Result<Principal, Failure> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(Failure::TokenUnknown);
        }
        let hash = secrets::token_hash(token);
        let state = self.read();
        let Some((id, token)) = state
            .token_hashes
            .get(&hash)
            .and_then(|id| Some((id, state.tokens.get(id)?)))
        else {
            return Err(Failure::TokenUnknown);
        };
        if token.expired(now_ms()) {
            return Err(Failure::TokenExpired(id.clone()));
        }
        let Some(user) = state
            .users
            .get(&token.user)
            .filter(|user| user.id == token.user_id)
        else {
            return Err(Failure::TokenUnknown);
        };
        if user.disabled {
            return Err(Failure::TokenUserDisabled(id.clone()));
        }
        Ok(Principal::user(token.user.clone(), user.roles.clone()))
    }

    /// Appends a user record (the caller holds `changes`), then applies it.
    async fn write_user(&self, record: UserRecord) -> Result<()> {
        let user = record.user().to_owned();
        let expected = self.read().users_revision;
        let revision = self
            .append(
                USERS_STREAM,
                expected,
                record.event_type(),
                &Stored::new(record.clone()),
            )
            .await?;
        {
            let mut state = self.write();
            state.apply_user(&record).map_err(Error::Internal)?;
            state.users_revision = Some(revision);
        }
        self.logins().forget(&user);
        Ok(())
    }

    /// Appends a token record (the caller holds `changes`), then applies it.
    async fn write_token(&self, record: TokenRecord) -> Result<()> {
        let expected = self.read().tokens_revision;
        let revision = self
            .append(
                TOKENS_STREAM,
                expected,
                record.event_type(),
                &Stored::new(record.clone()),
            )
            .await?;
        let mut state = self.write();
        state.apply_token(&record).map_err(Error::Internal)?;
        state.tokens_revision = Some(revision);
        Ok(())
    }

    /// Appends one record expecting `stream` at `last` (the last revision
    /// applied); returns the record's revision.
    async fn append(
        &self,
        stream: &str,
        last: Option<u64>,
        event_type: &str,
        record: &impl serde::Serialize,
    ) -> Result<u64> {
        let data = serde_json::to_vec(record)
            .map_err(|error| Error::Internal(format!("cannot encode a user record: {error}")))?;
        let expected = last.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
        let result = match self
            .store
            .append(stream, expected, vec![EventData::json(event_type, data)])
            .await
        {
            Ok(result) => result,
            Err(cairn_storage::Error::WrongExpectedRevision { .. }) => {
                return Err(Error::Internal(format!(
                    "{stream} was written by someone else than this server's user registry; restart the server"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        result
            .current
            .revision()
            .ok_or_else(|| Error::Internal(format!("an append to {stream} wrote nothing")))
    }

    /// Sets the admins-only `$acl` on both streams when they have no
    /// metadata yet. Best effort: the server-wide default for `$`-streams
    /// (admins only unless configured otherwise) applies without it.
    async fn protect_streams(&self) {
        for stream in [USERS_STREAM, TOKENS_STREAM] {
            let unset = self
                .store
                .stream_info(stream)
                .is_none_or(|info| info.metadata_revision.is_none());
            if !unset {
                continue;
            }
            let metadata = StreamMetadata {
                custom: Some(ADMINS_ONLY_ACL.to_owned()),
                ..StreamMetadata::default()
            };
            if let Err(error) = self
                .store
                .set_metadata(stream, ExpectedRevision::NoStream, metadata)
                .await
            {
                tracing::warn!(%stream, %error, "cannot set the admins-only ACL of a user stream");
            }
        }
    }

    /// Creates the first admin (see the module docs).
    async fn bootstrap(&self, options: &SecurityOptions) -> Result<()> {
        let (password, file) = match &options.initial_admin_password {
            Some(password) => {
                validate_password(password).map_err(|error| {
                    Error::InvalidArgument(format!("initial_admin_password: {error}"))
                })?;
                (password.clone(), None)
            }
            None => {
                let path = options
                    .bootstrap_file
                    .clone()
                    .unwrap_or_else(|| self.store.path().join(DEFAULT_BOOTSTRAP_FILE));
                let password = secrets::generate_password()?;
                let (writing, secret) = (path.clone(), password.clone());
                tokio::task::spawn_blocking(move || write_secret_file(&writing, &secret))
                    .await
                    .map_err(|error| Error::Internal(error.to_string()))?
                    .map_err(|error| {
                        Error::Internal(format!(
                            "cannot write the first admin password to {}: {error}",
                            path.display()
                        ))
                    })?;
                (password, Some(path))
            }
        };
        self.create_user(
            &Principal::system(),
            NewUser {
                name: BOOTSTRAP_USER.into(),
                full_name: "Administrator".into(),
                password,
                roles: vec![Role::Admin],
            },
        )
        .await?;
        match file {
            Some(path) => tracing::warn!(
                "first run: user `{BOOTSTRAP_USER}` (role admin) created; its password is in {}; change it with `cairn user passwd` and delete the file",
                path.display()
            ),
            None => tracing::info!(
                "first run: user `{BOOTSTRAP_USER}` (role admin) created with the configured initial_admin_password"
            ),
        }
        Ok(())
    }

    /// Hashes a password on the blocking pool.
    async fn hash(&self, password: String) -> Result<String> {
        self.blocking(move || secrets::hash_password(&password))
            .await?
    }

    /// Runs password work on the blocking pool, a few at a time.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|error| Error::Internal(error.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|error| Error::Internal(format!("a password task failed: {error}")))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn logins(&self) -> MutexGuard<'_, LoginCache> {
        self.logins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn limiter(&self) -> MutexGuard<'_, LoginLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ok for admins, the system, and `user` itself.
fn require_self_or_admin(by: &Principal, user: &str) -> Result<()> {
    if by.is_admin() || by.name() == user {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            operation: MANAGE_USERS.into(),
            stream: None,
        })
    }
}

/// Writes `secret` and a newline to a new file only its owner may read
/// (0600), creating the parent directory if needed.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    // A new file, so the mode applies: an old one may have a wider mode.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn validate_user_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a user name needs 1 to {MAX_USER_NAME_BYTES} bytes"
        )));
    }
    if name.starts_with('$') {
        return Err(Error::InvalidArgument(format!(
            "user name '{name}' is reserved: names starting with '$' belong to the system"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == ':') {
        return Err(Error::InvalidArgument(
            "a user name may not hold control characters or ':'".into(),
        ));
    }
    if name.trim() != name {
        return Err(Error::InvalidArgument(
            "a user name may not start or end with spaces".into(),
        ));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::LimitExceeded(format!(
            "a password is {} bytes, the limit is {MAX_PASSWORD_BYTES}",
            password.len()
        )));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::InvalidArgument(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

fn validate_full_name(full_name: &str) -> Result<()> {
    if full_name.len() > MAX_FULL_NAME_BYTES {
        return Err(Error::LimitExceeded(format!(
            "a full name is {} bytes, the limit is {MAX_FULL_NAME_BYTES}",
            full_name.len()
        )));
    }
    if full_name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(
            "a full name may not hold control characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_the_rules() {
        for good in [
            "alice",
            "a",
            "Ünïcødé user",
            &"x".repeat(MAX_USER_NAME_BYTES),
        ] {
            assert!(validate_user_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "$admins",
            "a:b",
            "line\nbreak",
            " padded",
            "padded ",
            &"x".repeat(MAX_USER_NAME_BYTES + 1),
        ] {
            assert!(
                matches!(validate_user_name(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_and_full_names_are_bounded() {
        assert!(validate_password("12345678").is_ok());
        assert!(matches!(
            validate_password("1234567"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(validate_password(&"p".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert!(matches!(
            validate_password(&"p".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(Error::LimitExceeded(_))
        ));
        assert!(validate_full_name(&"f".repeat(MAX_FULL_NAME_BYTES)).is_ok());
        assert!(matches!(
            validate_full_name(&"f".repeat(MAX_FULL_NAME_BYTES + 1)),
            Err(Error::LimitExceeded(_))
        ));
        assert!(matches!(
            validate_full_name("a\u{1b}[31m"),
            Err(Error::InvalidArgument(_))
        ));
    }
}

/// What the registry logs: failures name the user and the source, and no
/// password or token ever appears.
#[cfg(test)]
mod logging_tests {
    use std::fmt::Write as _;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// Every event's fields as `name=value` text.
    struct Capture(Arc<Mutex<String>>);

    struct Fields<'a>(&'a mut String);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut text = self.0.lock().unwrap();
            span.record(&mut Fields(&mut text));
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            values.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = self.0.lock().unwrap();
            event.record(&mut Fields(&mut text));
            text.push('\n');
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logs_name_users_and_sources_but_never_secrets() {
        let logged = Arc::new(Mutex::new(String::new()));
        let _capture = tracing::subscriber::set_default(Capture(Arc::clone(&logged)));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), cairn_storage::StoreOptions::default()).unwrap();
        let options = SecurityOptions {
            enabled: true,
            bootstrap_file: Some(dir.path().join("first")),
            ..SecurityOptions::default()
        };
        let users = Users::open(&store, &options, UserLimits::default())
            .await
            .unwrap();
        let generated = std::fs::read_to_string(dir.path().join("first")).unwrap();
        let system = Principal::system();
        users
            .create_user(
                &system,
                NewUser {
                    name: "alice".into(),
                    full_name: String::new(),
                    password: "alice secret one".into(),
                    roles: vec![],
                },
            )
            .await
            .unwrap();
        let source: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let login = |user: &str, password: &str| Credentials::Basic {
            user: user.into(),
            password: password.into(),
        };
        users
            .authenticate(login("alice", "alice wrong guess"), source)
            .await
            .unwrap_err();
        users
            .authenticate(login("mallory\n INFO forged", "mallory guess"), source)
            .await
            .unwrap_err();
        users
            .authenticate(login("alice", "alice secret one"), source)
            .await
            .unwrap();
        users
            .change_password(&system, "alice", "alice secret one", "alice secret two")
            .await
            .unwrap();
        users
            .reset_password(&system, "alice", "alice secret three")
            .await
            .unwrap();
        let token = users
            .create_token(
                &system,
                NewToken {
                    user: Some("alice".into()),
                    ..NewToken::default()
                },
            )
            .await
            .unwrap();
        users
            .authenticate(Credentials::Bearer(token.token.clone()), source)
            .await
            .unwrap();
        users
            .authenticate(Credentials::Bearer(format!("{}x", token.token)), source)
            .await
            .unwrap_err();
        store.shutdown();

        let logged = logged.lock().unwrap().clone();
        assert!(logged.contains("login failed"), "{logged}");
        assert!(logged.contains("user=alice"), "{logged}");
        assert!(logged.contains("192.0.2.7"), "{logged}");
        assert!(
            logged.contains("mallory\\n INFO forged"),
            "names are escaped: {logged}"
        );
        assert!(logged.contains("token login failed"), "{logged}");
        for secret in [
            "alice secret",
            "alice wrong guess",
            "mallory guess",
            generated.trim_end(),
            &token.token[TOKEN_PREFIX.len()..],
        ] {
            assert!(!logged.contains(secret), "{secret:?} was logged: {logged}");
        }
    }
}
