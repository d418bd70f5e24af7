//! The JSON records of users and tokens, and how they fold into state.
//!
//! This module owns their shape: renaming a field is a format change (bump
//! [`RECORD_VERSION`] and keep reading the old one). See the parent module
//! for the streams and what each record means.

use serde::{Deserialize, Serialize};

use crate::security::Role;

/// The stream of user records.
pub const USERS_STREAM: &str = "$sys-users";
/// The stream of token records.
pub const TOKENS_STREAM: &str = "$sys-tokens";
/// The version written into every record; a newer one is refused at load.
pub const RECORD_VERSION: u32 = 1;

/// A record as stored: its version beside the record's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored<R> {
    /// [`RECORD_VERSION`] when written.
    pub version: u32,
    /// The record (its `record` field names the kind).
    #[serde(flatten)]
    pub record: R,
}

impl<R> Stored<R> {
    /// `record` at the current version.
    pub fn new(record: R) -> Self {
        Self {
            version: RECORD_VERSION,
            record,
        }
    }
}

/// One change of one user, in `$sys-users`. Every record names the user and
/// the user's id (fixed at creation, so a user deleted and created again
/// under the same name is another user: the old one's tokens stay dead), the
/// time (`at_ms`, Unix milliseconds) and who made the change (`by`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum UserRecord {
    /// A new user.
    Created {
        user: String,
        id: String,
        full_name: String,
        roles: Vec<Role>,
        /// Argon2id PHC string.
        password_hash: String,
        at_ms: u64,
        by: String,
    },
    /// New full name and roles (the whole new value of both).
    Updated {
        user: String,
        id: String,
        full_name: String,
        roles: Vec<Role>,
        at_ms: u64,
        by: String,
    },
    /// A new password (changed by the user or reset by an admin).
    PasswordChanged {
        user: String,
        id: String,
        password_hash: String,
        at_ms: u64,
        by: String,
    },
    /// The user may no longer log in (passwords and tokens).
    Disabled {
        user: String,
        id: String,
        at_ms: u64,
        by: String,
    },
    /// The user may log in again.
    Enabled {
        user: String,
        id: String,
        at_ms: u64,
        by: String,
    },
    /// The user is gone, and with it every token issued to it.
    Deleted {
        user: String,
        id: String,
        at_ms: u64,
        by: String,
    },
}

impl UserRecord {
    /// The event type the record is stored under.
    pub fn event_type(&self) -> &'static str {
        match self {
            UserRecord::Created { .. } => "UserCreated",
            UserRecord::Updated { .. } => "UserUpdated",
            UserRecord::PasswordChanged { .. } => "UserPasswordChanged",
            UserRecord::Disabled { .. } => "UserDisabled",
            UserRecord::Enabled { .. } => "UserEnabled",
            UserRecord::Deleted { .. } => "UserDeleted",
        }
    }

    /// The name of the user the record changes.
    pub fn user(&self) -> &str {
        match self {
            UserRecord::Created { user, .. }
            | UserRecord::Updated { user, .. }
            | UserRecord::PasswordChanged { user, .. }
            | UserRecord::Disabled { user, .. }
            | UserRecord::Enabled { user, .. }
            | UserRecord::Deleted { user, .. } => user,
        }
    }
}

/// One change of one token, in `$sys-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TokenRecord {
    /// A new token. The secret itself is never stored: `hash` is the
    /// lowercase hex SHA-256 of the whole token text (`cairn_...`).
    Issued {
        id: String,
        user: String,
        user_id: String,
        name: String,
        hash: String,
        created_ms: u64,
        expires_ms: Option<u64>,
        by: String,
    },
    /// The token no longer authenticates.
    Revoked {
        id: String,
        user: String,
        at_ms: u64,
        by: String,
    },
}

impl TokenRecord {
    /// The event type the record is stored under.
    pub fn event_type(&self) -> &'static str {
        match self {
            TokenRecord::Issued { .. } => "TokenIssued",
            TokenRecord::Revoked { .. } => "TokenRevoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_version_and_kind_as_json() {
        let record = Stored::new(UserRecord::Disabled {
            user: "alice".into(),
            id: "u-1".into(),
            at_ms: 5,
            by: "admin".into(),
        });
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "record": "disabled", "user": "alice",
                "id": "u-1", "at_ms": 5, "by": "admin"})
        );
        let back: Stored<UserRecord> = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);

        let token = Stored::new(TokenRecord::Issued {
            id: "t".into(),
            user: "alice".into(),
            user_id: "u-1".into(),
            name: "ci".into(),
            hash: "00".into(),
            created_ms: 1,
            expires_ms: None,
            by: "alice".into(),
        });
        let text = serde_json::to_string(&token).unwrap();
        assert!(text.contains(r#""record":"issued""#), "{text}");
        assert_eq!(
            serde_json::from_str::<Stored<TokenRecord>>(&text).unwrap(),
            token
        );
    }
}
