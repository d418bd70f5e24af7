//! Authorization: per-stream access control lists and the server-wide
//! defaults, and the one check every facade's call goes through.
//!
//! A stream's ACL lives in its metadata's custom JSON under `$acl`, as in
//! KurrentDB:
//!
//! ```json
//! {"$acl": {"$r": ["$all"], "$w": ["alice", "$ops"], "$d": "$admins", "$mr": [], "$mw": "$admins"}}
//! ```
//!
//! Each key is one [`Access`]; its value is a name or a list of names: a user,
//! `$admins`, `$ops`, or `$all` (every authenticated user). A key that is
//! absent takes the server-wide default for user streams or for `$`-streams
//! ([`DefaultAcls`]); an empty list admits nobody but admins. Admins and the
//! system principal pass every check.
//!
//! A snapshot stream `$snapshot-S` (aggregate snapshots of `S`, see
//! [`cairn_storage::snapshot_base`]) has no ACL of its own: every access to
//! it is decided by `S`'s ACL ([`Access::on_snapshot_base`]), so whoever may
//! read `S` may read the state derived from it, and whoever may write `S` may
//! write its snapshots. A `$acl` in its own metadata is ignored, so writing
//! that metadata (retention) never opens the snapshots wider than `S`.
//!
//! Index reads (`$all`, `$ce-...`, `$et-...`) are open to every
//! authenticated user but *filtered*: a [`Visibility`] admits an event only
//! when its stream's read ACL admits the caller, so an event of a stream the
//! caller may not read never reaches the caller through an index.
//!
//! This module decides; it does not read credentials or talk to clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_storage::{Store, snapshot_base};

use super::{Principal, Role};
use crate::{Error, Result};

/// One kind of access to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read events (`$r`).
    Read,
    /// Append events (`$w`).
    Write,
    /// Soft-delete or tombstone (`$d`).
    Delete,
    /// Read the stream's metadata (`$mr`).
    MetadataRead,
    /// Write the stream's metadata, its ACL included (`$mw`).
    MetadataWrite,
}

impl Access {
    /// Every kind, in ACL key order.
    pub const ALL: [Access; 5] = [
        Access::Read,
        Access::Write,
        Access::Delete,
        Access::MetadataRead,
        Access::MetadataWrite,
    ];

    /// The `$acl` key.
    pub fn key(self) -> &'static str {
        match self {
            Access::Read => "$r",
            Access::Write => "$w",
            Access::Delete => "$d",
            Access::MetadataRead => "$mr",
            Access::MetadataWrite => "$mw",
        }
    }

    /// The access to the base stream `S` that decides this access to
    /// `$snapshot-S`: reading its events or metadata needs `S`'s read;
    /// writing its events or metadata (the retention the writer of snapshots
    /// sets) needs `S`'s write; deleting needs `S`'s delete.
    pub fn on_snapshot_base(self) -> Access {
        match self {
            Access::Read | Access::MetadataRead => Access::Read,
            Access::Write | Access::MetadataWrite => Access::Write,
            Access::Delete => Access::Delete,
        }
    }

    /// The operation's name in a PERMISSION_DENIED message.
    pub fn operation(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Delete => "delete",
            Access::MetadataRead => "read metadata",
            Access::MetadataWrite => "write metadata",
        }
    }
}

/// Who an ACL entry list admits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grantees(Vec<String>);

impl Grantees {
    /// Every authenticated user (`$all`).
    pub fn everyone() -> Self {
        Grantees(vec!["$all".into()])
    }

    /// Admins only (`$admins`).
    pub fn admins() -> Self {
        Grantees(vec!["$admins".into()])
    }

    /// The given entries.
    pub fn of(entries: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Grantees(entries.into_iter().map(Into::into).collect())
    }

    /// The entries.
    pub fn entries(&self) -> &[String] {
        &self.0
    }

    /// True when the entries name `principal`, one of its roles, or `$all`.
    /// Admins and the system are admitted by [`Authorizer`] before this.
    fn admit(&self, principal: &Principal) -> bool {
        self.0.iter().any(|entry| match entry.as_str() {
            "$all" => true,
            "$admins" => principal.has_role(Role::Admin),
            "$ops" => principal.has_role(Role::Ops),
            name => !principal.is_system() && name == principal.name(),
        })
    }
}

/// A full ACL: who may do each kind of access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// `$r`.
    pub read: Grantees,
    /// `$w`.
    pub write: Grantees,
    /// `$d`.
    pub delete: Grantees,
    /// `$mr`.
    pub metadata_read: Grantees,
    /// `$mw`.
    pub metadata_write: Grantees,
}

impl Acl {
    /// The same grantees for every access.
    pub fn uniform(grantees: Grantees) -> Self {
        Self {
            read: grantees.clone(),
            write: grantees.clone(),
            delete: grantees.clone(),
            metadata_read: grantees.clone(),
            metadata_write: grantees,
        }
    }

    /// The grantees of `access`.
    pub fn of(&self, access: Access) -> &Grantees {
        match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::Delete => &self.delete,
            Access::MetadataRead => &self.metadata_read,
            Access::MetadataWrite => &self.metadata_write,
        }
    }
}

/// The server-wide defaults, for what a stream's own `$acl` leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultAcls {
    /// Streams whose names do not start with `$`. Default: every
    /// authenticated user, for every access.
    pub user_streams: Acl,
    /// `$`-streams (`$users`, `$persistent-...`, parked events, ...).
    /// Default: admins only.
    pub system_streams: Acl,
}

impl Default for DefaultAcls {
    fn default() -> Self {
        Self {
            user_streams: Acl::uniform(Grantees::everyone()),
            system_streams: Acl::uniform(Grantees::admins()),
        }
    }
}

/// A stream's own `$acl`: `None` where the default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamAcl {
    entries: [Option<Grantees>; 5],
}

impl StreamAcl {
    /// The `$acl` of a stream's custom metadata JSON; an absent, empty or
    /// malformed `$acl` key (the store validated it as JSON) leaves every
    /// default in place, except that a present key of the wrong shape admits
    /// admins only — a typo must never open a stream up.
    pub fn from_custom_metadata(custom: Option<&str>) -> Self {
        let Some(custom) = custom else {
            return Self::default();
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(custom) else {
            return Self::default();
        };
        let Some(acl) = value.get("$acl") else {
            return Self::default();
        };
        let Some(acl) = acl.as_object() else {
            return Self {
                entries: std::array::from_fn(|_| Some(Grantees::default())),
            };
        };
        let entries = Access::ALL.map(|access| {
            acl.get(access.key()).map(|value| match value {
                serde_json::Value::String(name) => Grantees::of([name.clone()]),
                serde_json::Value::Array(names) => {
                    if names.iter().all(serde_json::Value::is_string) {
                        Grantees::of(names.iter().filter_map(|name| name.as_str()))
                    } else {
                        Grantees::default()
                    }
                }
                _ => Grantees::default(),
            })
        });
        Self { entries }
    }

    /// The stream's own grantees of `access`, if it sets them.
    pub fn of(&self, access: Access) -> Option<&Grantees> {
        self.entries[access as usize].as_ref()
    }
}

/// Most stream ACLs kept parsed; beyond it the cache starts over.
const ACL_CACHE_ENTRIES: usize = 65_536;

/// A parsed ACL and the metadata revision it was parsed from.
type CachedAcl = (Option<u64>, Arc<StreamAcl>);

/// Makes every access decision. Cheap to share (one per engine).
pub struct Authorizer {
    /// Stream metadata lives in the store's catalog.
    store: Store,
    /// The server-wide defaults.
    defaults: DefaultAcls,
    /// False in insecure mode (every caller is the system principal anyway).
    enabled: bool,
    /// Parsed ACLs by stream, with the metadata revision they were parsed
    /// from: a metadata write changes the revision, so a stale entry is never
    /// used.
    cache: Mutex<HashMap<String, CachedAcl>>,
}

impl Authorizer {
    /// An authorizer over the store's stream metadata.
    pub fn new(store: Store, defaults: DefaultAcls, enabled: bool) -> Self {
        Self {
            store,
            defaults,
            enabled,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The server-wide defaults.
    pub fn defaults(&self) -> &DefaultAcls {
        &self.defaults
    }

    /// Ok when `principal` may do `access` on `stream`; else
    /// [`Error::PermissionDenied`] naming the operation and the stream (never
    /// the ACL's contents).
    pub fn check(&self, principal: &Principal, access: Access, stream: &str) -> Result<()> {
        if self.allows(principal, access, stream) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                operation: access.operation().to_owned(),
                stream: Some(stream.to_owned()),
            })
        }
    }

    /// True when `principal` may do `access` on `stream`.
    pub fn allows(&self, principal: &Principal, access: Access, stream: &str) -> bool {
        if !self.enabled || principal.is_admin() {
            return true;
        }
        let (access, stream) = match snapshot_base(stream) {
            Some(base) => (access.on_snapshot_base(), base),
            None => (access, stream),
        };
        let own = self.stream_acl(stream);
        let grantees = match own.of(access) {
            Some(grantees) => grantees,
            None if stream.starts_with('$') => self.defaults.system_streams.of(access),
            None => self.defaults.user_streams.of(access),
        };
        grantees.admit(principal)
    }

    /// What `principal` may see of an index read (`$all`, `$ce-`, `$et-`):
    /// the events of streams it may read.
    pub fn visibility(self: &Arc<Self>, principal: &Principal) -> Visibility {
        if !self.enabled || principal.is_admin() {
            return Visibility(None);
        }
        Visibility(Some(Arc::new(Filtered {
            authorizer: Arc::clone(self),
            principal: principal.clone(),
            decided: Mutex::new(HashMap::new()),
        })))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedAcl>> {
        self.cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The stream's own ACL, parsed once per metadata revision: a cached
    /// one is checked against the revision alone, without copying the
    /// stream's metadata.
    fn stream_acl(&self, stream: &str) -> Arc<StreamAcl> {
        let Some(revision) = self.store.metadata_revision(stream) else {
            return Arc::new(StreamAcl::default());
        };
        if let Some((cached, acl)) = self.lock_cache().get(stream)
            && *cached == revision
        {
            return Arc::clone(acl);
        }
        let Some(info) = self.store.stream_info(stream) else {
            return Arc::new(StreamAcl::default());
        };
        let revision = info.metadata_revision;
        let acl = Arc::new(StreamAcl::from_custom_metadata(
            info.metadata.custom.as_deref(),
        ));
        let mut cache = self.lock_cache();
        if cache.len() >= ACL_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(stream.to_owned(), (revision, Arc::clone(&acl)));
        acl
    }
}

/// Which events of an index read a caller may see. `admits` is cheap after
/// the first event of each stream: decisions are kept per read (a read or
/// subscription is short compared with ACL changes; a long subscription
/// re-decides when the stream's metadata revision changes).
#[derive(Clone)]
pub struct Visibility(Option<Arc<Filtered>>);

struct Filtered {
    authorizer: Arc<Authorizer>,
    principal: Principal,
    /// Stream -> (metadata revision decided at, admitted).
    decided: Mutex<HashMap<String, (Option<u64>, bool)>>,
}

impl std::fmt::Debug for Visibility {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => formatter.write_str("Visibility(everything)"),
            Some(filtered) => write!(
                formatter,
                "Visibility(readable by {})",
                filtered.principal.name()
            ),
        }
    }
}

impl Visibility {
    /// Everything is visible (admins, the system, insecure mode).
    pub fn everything() -> Self {
        Visibility(None)
    }

    /// True when nothing is hidden.
    pub fn is_everything(&self) -> bool {
        self.0.is_none()
    }

    /// True when the caller may read events of `stream`.
    pub fn admits(&self, stream: &str) -> bool {
        let Some(filtered) = &self.0 else {
            return true;
        };
        // A snapshot stream's events are admitted by its base stream's ACL,
        // so the decision is as fresh as the base stream's metadata.
        let acl_stream = snapshot_base(stream).unwrap_or(stream);
        let revision = filtered
            .authorizer
            .store
            .metadata_revision(acl_stream)
            .flatten();
        let mut decided = filtered
            .decided
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((at, admitted)) = decided.get(stream)
            && *at == revision
        {
            return *admitted;
        }
        let admitted = filtered
            .authorizer
            .allows(&filtered.principal, Access::Read, stream);
        if decided.len() >= ACL_CACHE_ENTRIES {
            decided.clear();
        }
        decided.insert(stream.to_owned(), (revision, admitted));
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_keys_parse_from_strings_and_lists() {
        let acl = StreamAcl::from_custom_metadata(Some(
            r#"{"$acl": {"$r": "alice", "$w": ["bob", "$ops"]}, "other": 1}"#,
        ));
        assert_eq!(acl.of(Access::Read), Some(&Grantees::of(["alice"])));
        assert_eq!(acl.of(Access::Write), Some(&Grantees::of(["bob", "$ops"])));
        assert_eq!(acl.of(Access::Delete), None);
    }

    #[test]
    fn a_malformed_acl_admits_nobody_but_admins() {
        for custom in [
            r#"{"$acl": 3}"#,
            r#"{"$acl": {"$r": 3}}"#,
            r#"{"$acl": {"$r": [1]}}"#,
        ] {
            let acl = StreamAcl::from_custom_metadata(Some(custom));
            assert_eq!(acl.of(Access::Read), Some(&Grantees::default()), "{custom}");
            let alice = Principal::user("alice", []);
            assert!(!acl.of(Access::Read).unwrap().admit(&alice));
        }
    }

    #[test]
    fn snapshot_access_maps_to_the_base_streams_read_write_or_delete() {
        assert_eq!(Access::Read.on_snapshot_base(), Access::Read);
        assert_eq!(Access::MetadataRead.on_snapshot_base(), Access::Read);
        assert_eq!(Access::Write.on_snapshot_base(), Access::Write);
        assert_eq!(Access::MetadataWrite.on_snapshot_base(), Access::Write);
        assert_eq!(Access::Delete.on_snapshot_base(), Access::Delete);
    }

    #[test]
    fn grantees_admit_users_roles_and_everyone() {
        let alice = Principal::user("alice", []);
        let ops = Principal::user("olga", [Role::Ops]);
        assert!(Grantees::of(["alice"]).admit(&alice));
        assert!(!Grantees::of(["alice"]).admit(&ops));
        assert!(Grantees::of(["$ops"]).admit(&ops));
        assert!(!Grantees::of(["$ops"]).admit(&alice));
        assert!(Grantees::everyone().admit(&alice));
        assert!(!Grantees::admins().admit(&ops));
        assert!(!Grantees::default().admit(&alice));
    }
}
