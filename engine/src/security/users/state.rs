//! Users and tokens in memory: the fold of `$sys-users` and `$sys-tokens`
//! (see the parent module for the records), and the checks that need the
//! whole picture (the last enabled admin).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_storage::{RecordedEvent, Store};

use super::records::{
    RECORD_VERSION, Stored, TOKENS_STREAM, TokenRecord, USERS_STREAM, UserRecord,
};
use super::{TokenDetails, UserDetails, secrets};
use crate::security::Role;
use crate::{Error, Result};

/// One user in memory.
#[derive(Clone)]
pub(super) struct User {
    /// Fixed at creation (tokens point to it).
    pub(super) id: String,
    pub(super) full_name: String,
    /// Sorted, no duplicates.
    pub(super) roles: Vec<Role>,
    /// Argon2id PHC string.
    pub(super) password_hash: String,
    pub(super) disabled: bool,
    pub(super) created_ms: u64,
    pub(super) updated_ms: u64,
    /// Changes with every record applied to this user: cached logins of an
    /// older version are void.
    pub(super) generation: u64,
}

/// One token in memory.
#[derive(Clone)]
pub(super) struct Token {
    pub(super) user: String,
    pub(super) user_id: String,
    pub(super) name: String,
    pub(super) hash: [u8; 32],
    pub(super) created_ms: u64,
    pub(super) expires_ms: Option<u64>,
}

impl Token {
    pub(super) fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| expires <= now_ms)
    }

    pub(super) fn details(&self, id: &str, now_ms: u64) -> TokenDetails {
        TokenDetails {
            id: id.to_owned(),
            user: self.user.clone(),
            name: self.name.clone(),
            created: time(self.created_ms),
            expires: self.expires_ms.map(time),
            expired: self.expired(now_ms),
        }
    }
}

/// Everything the records say, folded.
#[derive(Default)]
pub(super) struct State {
    pub(super) users: BTreeMap<String, User>,
    /// By id.
    pub(super) tokens: HashMap<String, Token>,
    /// Token hash -> id.
    pub(super) token_hashes: HashMap<[u8; 32], String>,
    /// The last revision of `$sys-users` applied.
    pub(super) users_revision: Option<u64>,
    /// The last revision of `$sys-tokens` applied.
    pub(super) tokens_revision: Option<u64>,
    /// The next user generation.
    pub(super) next_generation: u64,
}

impl State {
    /// Applies one user record; an error means the records contradict
    /// themselves (corrupt, or a bug).
    pub(super) fn apply_user(&mut self, record: &UserRecord) -> std::result::Result<(), String> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let (user, id, at_ms) = match record {
            UserRecord::Created {
                user,
                id,
                full_name,
                roles,
                password_hash,
                at_ms,
                ..
            } => {
                if self.users.contains_key(user) {
                    return Err(format!("user '{user}' is created twice"));
                }
                self.users.insert(
                    user.clone(),
                    User {
                        id: id.clone(),
                        full_name: full_name.clone(),
                        roles: sorted(roles),
                        password_hash: password_hash.clone(),
                        disabled: false,
                        created_ms: *at_ms,
                        updated_ms: *at_ms,
                        generation,
                    },
                );
                return Ok(());
            }
            UserRecord::Updated {
                user, id, at_ms, ..
            }
            | UserRecord::PasswordChanged {
                user, id, at_ms, ..
            }
            | UserRecord::Disabled {
                user, id, at_ms, ..
            }
            | UserRecord::Enabled {
                user, id, at_ms, ..
            }
            | UserRecord::Deleted {
                user, id, at_ms, ..
            } => (user, id, *at_ms),
        };
        let Some(entry) = self.users.get_mut(user).filter(|entry| entry.id == *id) else {
            return Err(format!(
                "a record names user '{user}' (id {id}), which does not exist"
            ));
        };
        entry.generation = generation;
        entry.updated_ms = at_ms;
        match record {
            UserRecord::Created { .. } => {}
            UserRecord::Updated {
                full_name, roles, ..
            } => {
                entry.full_name = full_name.clone();
                entry.roles = sorted(roles);
            }
            UserRecord::PasswordChanged { password_hash, .. } => {
                entry.password_hash = password_hash.clone();
            }
            UserRecord::Disabled { .. } => entry.disabled = true,
            UserRecord::Enabled { .. } => entry.disabled = false,
            UserRecord::Deleted { .. } => {
                self.users.remove(user);
                let gone: Vec<String> = self
                    .tokens
                    .iter()
                    .filter(|(_, token)| token.user_id == *id)
                    .map(|(token_id, _)| token_id.clone())
                    .collect();
                for token_id in gone {
                    self.remove_token(&token_id);
                }
            }
        }
        Ok(())
    }

    /// Applies one token record. Tokens of users that are gone are dropped
    /// (the user was deleted after issuing them), as are revocations of
    /// tokens already dropped.
    pub(super) fn apply_token(&mut self, record: &TokenRecord) -> std::result::Result<(), String> {
        match record {
            TokenRecord::Issued {
                id,
                user,
                user_id,
                name,
                hash,
                created_ms,
                expires_ms,
                ..
            } => {
                let hash = secrets::parse_hex32(hash)
                    .ok_or_else(|| format!("token {id} has a malformed hash"))?;
                if self
                    .users
                    .get(user)
                    .is_none_or(|entry| entry.id != *user_id)
                {
                    return Ok(());
                }
                self.token_hashes.insert(hash, id.clone());
                self.tokens.insert(
                    id.clone(),
                    Token {
                        user: user.clone(),
                        user_id: user_id.clone(),
                        name: name.clone(),
                        hash,
                        created_ms: *created_ms,
                        expires_ms: *expires_ms,
                    },
                );
            }
            TokenRecord::Revoked { id, .. } => self.remove_token(id),
        }
        Ok(())
    }

    pub(super) fn remove_token(&mut self, id: &str) {
        if let Some(token) = self.tokens.remove(id) {
            self.token_hashes.remove(&token.hash);
        }
    }

    /// Drops `user`'s expired tokens from memory (their records stay).
    pub(super) fn prune_expired(&mut self, user: &str, now_ms: u64) {
        let expired: Vec<String> = self
            .tokens
            .iter()
            .filter(|(_, token)| token.user == user && token.expired(now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_token(&id);
        }
    }

    pub(super) fn enabled_admins(&self) -> usize {
        self.users
            .values()
            .filter(|user| !user.disabled && user.roles.contains(&Role::Admin))
            .count()
    }

    /// Refuses a change that would leave no enabled admin: `user` is one
    /// and is about to stop being one.
    pub(super) fn keep_an_admin(&self, user: &str, what: &str) -> Result<()> {
        let is_enabled_admin = self
            .users
            .get(user)
            .is_some_and(|entry| !entry.disabled && entry.roles.contains(&Role::Admin));
        if is_enabled_admin && self.enabled_admins() == 1 {
            return Err(Error::InvalidArgument(format!(
                "cannot {what} user '{user}': it is the last enabled admin; give another user the admin role first"
            )));
        }
        Ok(())
    }

    pub(super) fn user(&self, name: &str) -> Result<&User> {
        self.users.get(name).ok_or_else(|| Error::UserNotFound {
            user: name.to_owned(),
        })
    }

    pub(super) fn details(&self, name: &str) -> Result<UserDetails> {
        let user = self.user(name)?;
        Ok(UserDetails {
            name: name.to_owned(),
            full_name: user.full_name.clone(),
            roles: user.roles.clone(),
            disabled: user.disabled,
            created: time(user.created_ms),
            updated: time(user.updated_ms),
        })
    }
}

/// Records of `$sys-users` and `$sys-tokens` read from the store, each with
/// its revision, in stream order.
#[derive(Default)]
pub(super) struct Records {
    users: Vec<(u64, UserRecord)>,
    tokens: Vec<(u64, TokenRecord)>,
}

/// The records after revision `users_after` of `$sys-users` and after
/// `tokens_after` of `$sys-tokens` (`None`: from the start); blocking:
/// storage reads. A record that cannot be decoded fails the read.
pub(super) fn read_after(
    store: &Store,
    users_after: Option<u64>,
    tokens_after: Option<u64>,
) -> Result<Records> {
    let from = |after: Option<u64>| after.map_or(0, |revision| revision + 1);
    let mut records = Records::default();
    for event in crate::read_stream_from(store, USERS_STREAM, from(users_after))? {
        records.users.push((event.revision, decode(&event)?));
    }
    for event in crate::read_stream_from(store, TOKENS_STREAM, from(tokens_after))? {
        records.tokens.push((event.revision, decode(&event)?));
    }
    Ok(records)
}

impl State {
    /// Applies `records` in order, skipping each one at or below the
    /// revision already applied of its stream (this registry appended and
    /// applied it itself after they were read), and returns the names of the
    /// users they changed. An error means the records contradict themselves.
    pub(super) fn apply_records(&mut self, records: Records) -> Result<Vec<String>> {
        let mut touched = Vec::new();
        for (revision, record) in records.users {
            if self
                .users_revision
                .is_some_and(|applied| revision <= applied)
            {
                continue;
            }
            self.apply_user(&record)
                .map_err(|error| corrupt_at(USERS_STREAM, revision, &error))?;
            self.users_revision = Some(revision);
            touched.push(record.user().to_owned());
        }
        for (revision, record) in records.tokens {
            if self
                .tokens_revision
                .is_some_and(|applied| revision <= applied)
            {
                continue;
            }
            self.apply_token(&record)
                .map_err(|error| corrupt_at(TOKENS_STREAM, revision, &error))?;
            self.tokens_revision = Some(revision);
        }
        Ok(touched)
    }
}

/// Folds both streams (blocking: storage reads).
pub(super) fn restore(store: &Store) -> Result<State> {
    let mut state = State::default();
    state.apply_records(read_after(store, None, None)?)?;
    let now = now_ms();
    let expired: Vec<String> = state
        .tokens
        .iter()
        .filter(|(_, token)| token.expired(now))
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        state.remove_token(&id);
    }
    Ok(state)
}

pub(super) fn decode<R: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<R> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let version: Version =
        serde_json::from_slice(&event.data).map_err(|error| corrupt(event, &error))?;
    if version.version > RECORD_VERSION {
        return Err(Error::Corrupt(format!(
            "{} revision {} has record version {}, newer than this server reads ({RECORD_VERSION}); run a newer server",
            event.stream, event.revision, version.version
        )));
    }
    let stored: Stored<R> =
        serde_json::from_slice(&event.data).map_err(|error| corrupt(event, &error))?;
    Ok(stored.record)
}

pub(super) fn corrupt(event: &RecordedEvent, error: &dyn std::fmt::Display) -> Error {
    corrupt_at(&event.stream, event.revision, error)
}

/// [`corrupt`] for the record at `revision` of `stream`.
pub(super) fn corrupt_at(stream: &str, revision: u64, error: &dyn std::fmt::Display) -> Error {
    Error::Corrupt(format!("{stream} revision {revision}: {error}"))
}

pub(super) fn sorted(roles: &[Role]) -> Vec<Role> {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

pub(super) fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(user: &str, id: &str, roles: Vec<Role>) -> UserRecord {
        UserRecord::Created {
            user: user.into(),
            id: id.into(),
            full_name: String::new(),
            roles,
            password_hash: "h".into(),
            at_ms: 1,
            by: "$system".into(),
        }
    }

    #[test]
    fn folding_tracks_admins_and_drops_a_deleted_users_tokens() {
        let mut state = State::default();
        state
            .apply_user(&created("root", "1", vec![Role::Admin]))
            .unwrap();
        state.apply_user(&created("bob", "2", vec![])).unwrap();
        assert_eq!(state.enabled_admins(), 1);
        assert!(state.keep_an_admin("root", "disable").is_err());
        assert!(state.keep_an_admin("bob", "disable").is_ok());
        let issued = |id: &str, user: &str, user_id: &str| TokenRecord::Issued {
            id: id.into(),
            user: user.into(),
            user_id: user_id.into(),
            name: String::new(),
            hash: secrets::hex(&secrets::token_hash(id)),
            created_ms: 1,
            expires_ms: None,
            by: user.into(),
        };
        state.apply_token(&issued("t1", "bob", "2")).unwrap();
        state
            .apply_token(&issued("t-stale", "bob", "old-id"))
            .unwrap();
        assert_eq!(
            state.tokens.len(),
            1,
            "a token of another user of that name is dropped"
        );
        let generation = state.users["bob"].generation;
        state
            .apply_user(&UserRecord::Deleted {
                user: "bob".into(),
                id: "2".into(),
                at_ms: 2,
                by: "root".into(),
            })
            .unwrap();
        assert!(state.tokens.is_empty() && state.token_hashes.is_empty());
        state.apply_user(&created("bob", "3", vec![])).unwrap();
        assert_ne!(state.users["bob"].generation, generation);
        assert!(
            state
                .apply_user(&UserRecord::Disabled {
                    user: "bob".into(),
                    id: "2".into(),
                    at_ms: 3,
                    by: "root".into(),
                })
                .is_err(),
            "a record of the old bob does not touch the new one"
        );
    }

    #[test]
    fn records_at_or_below_the_applied_revision_are_skipped_and_the_rest_applied_in_order() {
        let mut state = State::default();
        state
            .apply_records(Records {
                users: vec![(0, created("root", "1", vec![Role::Admin]))],
                tokens: Vec::new(),
            })
            .unwrap();
        // Read before this registry applied revision 0 itself: 0 is skipped
        // (applying it twice would create root twice), 1 and 2 are new.
        let touched = state
            .apply_records(Records {
                users: vec![
                    (0, created("root", "1", vec![Role::Admin])),
                    (1, created("bob", "2", vec![])),
                    (
                        2,
                        UserRecord::Disabled {
                            user: "bob".into(),
                            id: "2".into(),
                            at_ms: 2,
                            by: "root".into(),
                        },
                    ),
                ],
                tokens: Vec::new(),
            })
            .unwrap();
        assert_eq!(touched, ["bob", "bob"]);
        assert_eq!(state.users_revision, Some(2));
        assert!(state.users["bob"].disabled);
        assert_eq!(state.tokens_revision, None);
        let contradiction = state.apply_records(Records {
            users: vec![(3, created("bob", "4", vec![]))],
            tokens: Vec::new(),
        });
        match contradiction {
            Err(Error::Corrupt(message)) => {
                assert!(message.contains("$sys-users revision 3"), "{message}");
            }
            other => panic!("a user created twice was applied: {:?}", other.err()),
        }
        assert_eq!(
            state.users_revision,
            Some(2),
            "the bad record is not applied"
        );
    }
}
