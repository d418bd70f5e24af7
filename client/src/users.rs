//! Users, passwords and bearer tokens (`cairn.v1.Users`), and who the server
//! takes this client for.
//!
//! ```no_run
//! use cairn_client::{Client, NewToken, NewUser};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let admin = Client::connect("http://127.0.0.1:7070").await?;
//! admin.create_user(NewUser::new("billing", "a long password").roles(["ops"])).await?;
//! let token = admin.create_token(NewToken::for_user("billing").name("billing service")).await?;
//! println!("store this, it is shown once: {}", token.secret);
//! println!("I am {}", admin.whoami().await?.user);
//! # Ok(()) }
//! ```
//!
//! Roles are names: `admin` and `ops` (the server refuses others). Managing
//! other users needs `admin`; every user may read its own details, change its
//! own password and manage its own tokens.
//!
//! In a cluster only the leader changes users and tokens (a follower answers
//! [`Error::NotLeader`](crate::Error::NotLeader)). A client built with
//! [`ClientBuilder::seeds`](crate::ClientBuilder::seeds) sends every change
//! to the leader and retries it there while the leader changes, as it does
//! writes; the lists, details and `whoami` are read on the node in use. A
//! retry is the same request again, and the server cannot tell it from a
//! second one: when the attempt that failed (its outcome unknown) was
//! committed after all, the retry answers what a repeat answers, which each
//! method's docs name. `create_token` is not retried after an unknown
//! outcome, since its repeat would issue a second token.

use std::time::{Duration, SystemTime};

use cairn_proto::v1 as pb;

use crate::leader::Resend;
use crate::{Client, Result};

/// A user to create. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The user name (1..=128 bytes, no `:` or control characters, not
    /// starting with `$`).
    pub user: String,
    /// Free text, at most 1 KiB.
    pub full_name: String,
    /// At least 8 characters, at most 1 KiB.
    pub password: String,
    /// `admin`, `ops`, or none for a plain user.
    pub roles: Vec<String>,
}

impl NewUser {
    /// A plain user (no roles, no full name).
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            full_name: String::new(),
            password: password.into(),
            roles: Vec::new(),
        }
    }

    /// Sets the full name.
    #[must_use]
    pub fn full_name(mut self, full_name: impl Into<String>) -> Self {
        self.full_name = full_name.into();
        self
    }

    /// Sets the roles.
    #[must_use]
    pub fn roles(mut self, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewUser")
            .field("user", &self.user)
            .field("full_name", &self.full_name)
            .field("password", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

/// A change of a user; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// The new full name.
    pub full_name: Option<String>,
    /// The new roles (the whole set; empty: a plain user).
    pub roles: Option<Vec<String>>,
}

/// What the server shows of a user (never its password or hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDetails {
    /// The user name.
    pub user: String,
    /// The full name.
    pub full_name: String,
    /// Its roles, sorted.
    pub roles: Vec<String>,
    /// True when it may not log in.
    pub disabled: bool,
    /// When it was created.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
}

/// A token to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewToken {
    /// Whose token; `None`: the caller's own. Admins may name anyone.
    pub user: Option<String>,
    /// A name or description for lists; at most 256 bytes.
    pub name: String,
    /// How long it is valid (whole seconds); `None`: until revoked.
    pub expires_in: Option<Duration>,
}

impl NewToken {
    /// A token for the caller itself.
    pub fn own() -> Self {
        Self::default()
    }

    /// A token for `user` (admins only, unless it is the caller).
    pub fn for_user(user: impl Into<String>) -> Self {
        Self {
            user: Some(user.into()),
            ..Self::default()
        }
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the lifetime (rounded up to whole seconds).
    #[must_use]
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = Some(lifetime);
        self
    }
}

/// What the server shows of a token (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDetails {
    /// The token's id (to revoke it).
    pub id: String,
    /// Its user.
    pub user: String,
    /// Its name.
    pub name: String,
    /// When it was issued.
    pub created: SystemTime,
    /// When it stops working, if ever.
    pub expires: Option<SystemTime>,
    /// True once `expires` has passed.
    pub expired: bool,
}

/// A token just created. `secret` is shown only this once; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedToken {
    /// What lists show of it.
    pub details: TokenDetails,
    /// The token (`cairn_...`), for [`ClientBuilder::token`](crate::ClientBuilder::token)
    /// or `authorization: Bearer <secret>`.
    pub secret: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CreatedToken")
            .field("details", &self.details)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Who the server takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The user name (`$system` in insecure mode).
    pub user: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// True when the server runs in insecure mode (no credentials checked;
    /// every caller may do everything).
    pub system: bool,
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|timestamp| SystemTime::try_from(timestamp).ok())
}

impl From<pb::UserDetails> for UserDetails {
    fn from(details: pb::UserDetails) -> Self {
        Self {
            user: details.user,
            full_name: details.full_name,
            roles: details.roles,
            disabled: details.disabled,
            created: time(details.created).unwrap_or(SystemTime::UNIX_EPOCH),
            updated: time(details.updated).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

impl From<pb::TokenDetails> for TokenDetails {
    fn from(details: pb::TokenDetails) -> Self {
        Self {
            id: details.id,
            user: details.user,
            name: details.name,
            created: time(details.created).unwrap_or(SystemTime::UNIX_EPOCH),
            expires: time(details.expires),
            expired: details.expired,
        }
    }
}

impl Client {
    /// Creates a user (admin). On a cluster client it goes to the leader
    /// and is retried while the leader changes (see the module docs): a
    /// retry of an attempt that was committed after all answers
    /// [`Error::UserExists`](crate::Error::UserExists).
    pub async fn create_user(&self, new: NewUser) -> Result<UserDetails> {
        let request = pb::CreateUserRequest {
            user: new.user,
            full_name: new.full_name,
            password: new.password,
            roles: new.roles,
        };
        let response = self
            .on_leader_of(
                &self.users,
                Resend::AfterUnknownOutcome,
                request,
                |mut users, request| async move { users.create(request).await },
            )
            .await?;
        Ok(response.into())
    }

    /// Deletes a user and its tokens (admin). On a cluster client it goes
    /// to the leader and is retried while the leader changes: a retry of an
    /// attempt that was committed after all answers
    /// [`Error::UserNotFound`](crate::Error::UserNotFound).
    pub async fn delete_user(&self, user: impl Into<String>) -> Result<()> {
        let request = pb::DeleteUserRequest { user: user.into() };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.delete(request).await },
        )
        .await?;
        Ok(())
    }

    /// Disables a user: its password and tokens stop working (admin).
    /// Disabling a disabled user changes nothing, so on a cluster client,
    /// which sends it to the leader and retries it while the leader
    /// changes, a retry answers as the first attempt would have.
    pub async fn disable_user(&self, user: impl Into<String>) -> Result<()> {
        let request = pb::DisableUserRequest { user: user.into() };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.disable(request).await },
        )
        .await?;
        Ok(())
    }

    /// Enables a disabled user (admin). Enabling an enabled user changes
    /// nothing, so on a cluster client, which sends it to the leader and
    /// retries it while the leader changes, a retry answers as the first
    /// attempt would have.
    pub async fn enable_user(&self, user: impl Into<String>) -> Result<()> {
        let request = pb::EnableUserRequest { user: user.into() };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.enable(request).await },
        )
        .await?;
        Ok(())
    }

    /// Changes a user's full name and/or roles (admin). On a cluster client
    /// it goes to the leader and is retried while the leader changes; a
    /// retry sets the same values again.
    pub async fn update_user(
        &self,
        user: impl Into<String>,
        update: UserUpdate,
    ) -> Result<UserDetails> {
        let request = pb::UpdateUserRequest {
            user: user.into(),
            full_name: update.full_name,
            roles: update.roles.map(|roles| pb::RoleList { roles }),
        };
        let response = self
            .on_leader_of(
                &self.users,
                Resend::AfterUnknownOutcome,
                request,
                |mut users, request| async move { users.update(request).await },
            )
            .await?;
        Ok(response.into())
    }

    /// Changes the caller's own password, given the current one. On a
    /// cluster client it goes to the leader and is retried while the leader
    /// changes: a retry of an attempt that was committed after all finds
    /// `current_password` wrong (it is the old one now) and answers
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument), or
    /// [`Error::Unauthenticated`](crate::Error::Unauthenticated) when the
    /// client logs in with that password; log in with the new one to check.
    pub async fn change_password(
        &self,
        user: impl Into<String>,
        current_password: impl Into<String>,
        new_password: impl Into<String>,
    ) -> Result<()> {
        let request = pb::ChangePasswordRequest {
            user: user.into(),
            current_password: current_password.into(),
            new_password: new_password.into(),
        };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.change_password(request).await },
        )
        .await?;
        Ok(())
    }

    /// Sets a user's password without the current one (admin). On a cluster
    /// client it goes to the leader and is retried while the leader
    /// changes; a retry sets the same password again.
    pub async fn reset_password(
        &self,
        user: impl Into<String>,
        new_password: impl Into<String>,
    ) -> Result<()> {
        let request = pb::ResetPasswordRequest {
            user: user.into(),
            new_password: new_password.into(),
        };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.reset_password(request).await },
        )
        .await?;
        Ok(())
    }

    /// Every user, by name (admin).
    pub async fn list_users(&self) -> Result<Vec<UserDetails>> {
        let response = self
            .users
            .clone()
            .list(pb::ListUsersRequest {})
            .await?
            .into_inner();
        Ok(response.users.into_iter().map(UserDetails::from).collect())
    }

    /// One user (admin, or the user itself).
    pub async fn user_details(&self, user: impl Into<String>) -> Result<UserDetails> {
        let request = pb::UserDetailsRequest { user: user.into() };
        Ok(self
            .users
            .clone()
            .details(request)
            .await?
            .into_inner()
            .into())
    }

    /// Creates a bearer token; its secret is in the result only.
    ///
    /// On a cluster client it goes to the leader, but unlike the other
    /// changes it is sent again only after
    /// [`Error::NotLeader`](crate::Error::NotLeader): each attempt issues a
    /// new token, so a retry of one that was committed after all would leave
    /// two. After [`Error::Unavailable`](crate::Error::Unavailable) or
    /// [`Error::Connect`](crate::Error::Connect) the outcome is unknown: the
    /// client moves to another node and returns the error, and
    /// [`Client::list_tokens`] shows whether the token was issued (by its
    /// name; its secret is lost: revoke it, then create another). A follower
    /// refuses before it does anything, so following its `NotLeader` issues
    /// one token. A leader that loses leadership while it replicates the
    /// token answers `NotLeader` too, with the outcome unknown: then (rarely)
    /// the retry's token is returned and the first may exist as well, its
    /// secret never shown; list and revoke it as above.
    pub async fn create_token(&self, new: NewToken) -> Result<CreatedToken> {
        let request = pb::CreateTokenRequest {
            user: new.user.unwrap_or_default(),
            name: new.name,
            expires_in_seconds: new
                .expires_in
                .map(|lifetime| lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)),
        };
        let response = self
            .on_leader_of(
                &self.users,
                Resend::AfterRefusal,
                request,
                |mut users, request| async move { users.create_token(request).await },
            )
            .await?;
        let details = response.token.ok_or_else(|| crate::Error::Other {
            code: tonic::Code::Internal,
            message: "the server sent a token without its details".into(),
        })?;
        Ok(CreatedToken {
            details: details.into(),
            secret: response.secret,
        })
    }

    /// Tokens: `user`'s, or with `None` the caller's own (every token for
    /// an admin). Never their secrets.
    pub async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenDetails>> {
        let request = pb::ListTokensRequest {
            user: user.unwrap_or_default().to_owned(),
        };
        let response = self.users.clone().list_tokens(request).await?.into_inner();
        Ok(response
            .tokens
            .into_iter()
            .map(TokenDetails::from)
            .collect())
    }

    /// Revokes a token by id: it stops working at once. On a cluster client
    /// it goes to the leader and is retried while the leader changes: a
    /// retry of an attempt that was committed after all answers
    /// [`Error::TokenNotFound`](crate::Error::TokenNotFound).
    pub async fn revoke_token(&self, id: impl Into<String>) -> Result<()> {
        let request = pb::RevokeTokenRequest { id: id.into() };
        self.on_leader_of(
            &self.users,
            Resend::AfterUnknownOutcome,
            request,
            |mut users, request| async move { users.revoke_token(request).await },
        )
        .await?;
        Ok(())
    }

    /// Who the server takes this client for.
    pub async fn whoami(&self) -> Result<WhoAmI> {
        let response = self
            .users
            .clone()
            .who_am_i(pb::WhoAmIRequest {})
            .await?
            .into_inner();
        Ok(WhoAmI {
            user: response.user,
            roles: response.roles,
            system: response.system,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let user = NewUser::new("alice", "hunter2hunter2").roles(["ops"]);
        assert!(!format!("{user:?}").contains("hunter2"));
        let token = CreatedToken {
            details: TokenDetails {
                id: "1".into(),
                user: "alice".into(),
                name: String::new(),
                created: SystemTime::UNIX_EPOCH,
                expires: None,
                expired: false,
            },
            secret: "cairn_secret".into(),
        };
        assert!(!format!("{token:?}").contains("cairn_secret"));
    }
}
