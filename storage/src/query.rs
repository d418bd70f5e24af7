//! Dynamic consistency boundaries (DCB): event tags, queries over types and
//! tags, and append conditions.
//!
//! This module owns the query model (what a query is, its limits, when an
//! event matches it) and the one cursor that finds the positions of matching
//! events through the indexes (`type_index` and `tag_index`), for query reads
//! (`read.rs`) and for checking append conditions in the committer. It neither
//! decides visibility (the reader does) nor writes anything.
//!
//! A query is a list of items; an event matches an item when its type is one
//! of the item's types (any type when the item lists none) and it carries every
//! one of the item's tags; it matches the query when it matches any item. An
//! item with neither types nor tags matches every event, and so does a query
//! with no items.

use std::collections::HashSet;

use rocksdb::{DB, DBRawIteratorWithThreadMode, ReadOptions, SnapshotWithThreadMode};

use crate::codec::{self, RecordHeader, cf};
use crate::error::{Error, Result};
use crate::model::Direction;

/// Most tags on one event.
pub const MAX_TAGS_PER_EVENT: usize = 64;
/// The longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 256;
/// Most items in one query.
pub const MAX_QUERY_ITEMS: usize = 100;
/// Most types, and most tags, in one query item.
pub const MAX_QUERY_ITEM_VALUES: usize = 100;
/// Most bytes of all types and tags of one query together.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// One alternative of a [`Query`]: events of any of `types` (any type when
/// empty) carrying every one of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct QueryItem {
    /// Event types; empty means every type.
    pub types: Vec<String>,
    /// Tags an event must all carry; empty means no constraint.
    pub tags: Vec<String>,
}

impl QueryItem {
    /// An item matching events of these types (any tags).
    pub fn types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Self {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// An item matching events carrying all of these tags (any type).
    pub fn tags<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Self {
        Self {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds tags the events must carry too.
    #[must_use]
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Whether an event of `event_type` carrying `tags` matches this item.
    pub fn matches<'t>(
        &self,
        event_type: &str,
        tags: impl Iterator<Item = &'t str> + Clone,
    ) -> bool {
        (self.types.is_empty() || self.types.iter().any(|wanted| wanted == event_type))
            && self
                .tags
                .iter()
                .all(|wanted| tags.clone().any(|tag| tag == wanted))
    }
}

/// A DCB query: events matching any of its items. No items: every event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Query {
    /// The alternatives.
    pub items: Vec<QueryItem>,
}

impl Query {
    /// The query matching every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// A query of these items.
    pub fn of(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Self {
            items: items.into_iter().collect(),
        }
    }

    /// Whether it matches every event (no items, or an item without types
    /// and tags).
    pub fn matches_everything(&self) -> bool {
        self.items.is_empty()
            || self
                .items
                .iter()
                .any(|item| item.types.is_empty() && item.tags.is_empty())
    }

    /// Whether an event of `event_type` carrying `tags` matches.
    pub fn matches<'t>(
        &self,
        event_type: &str,
        tags: impl Iterator<Item = &'t str> + Clone,
    ) -> bool {
        self.items.is_empty()
            || self
                .items
                .iter()
                .any(|item| item.matches(event_type, tags.clone()))
    }

    /// Checks the query's size limits, in counts and bytes; every read and
    /// condition checks its query with this.
    pub fn validate(&self) -> Result<()> {
        if self.items.len() > MAX_QUERY_ITEMS {
            return Err(Error::LimitExceeded {
                what: "items in one query",
                actual: self.items.len() as u64,
                limit: MAX_QUERY_ITEMS as u64,
            });
        }
        let mut bytes = 0usize;
        for item in &self.items {
            for (what, values) in [
                ("types in one query item", &item.types),
                ("tags in one query item", &item.tags),
            ] {
                if values.len() > MAX_QUERY_ITEM_VALUES {
                    return Err(Error::LimitExceeded {
                        what,
                        actual: values.len() as u64,
                        limit: MAX_QUERY_ITEM_VALUES as u64,
                    });
                }
                for value in values {
                    if value.is_empty() {
                        return Err(Error::InvalidArgument(
                            "a query's types and tags must not be empty strings".into(),
                        ));
                    }
                    bytes += value.len();
                }
            }
        }
        if bytes > MAX_QUERY_BYTES {
            return Err(Error::LimitExceeded {
                what: "query size in bytes",
                actual: bytes as u64,
                limit: MAX_QUERY_BYTES as u64,
            });
        }
        Ok(())
    }

    /// Whether the event of `header` (decoded from `record`) matches.
    pub(crate) fn matches_record(&self, header: &RecordHeader<'_>, record: &[u8]) -> bool {
        self.matches(header.event_type, header.tags(record))
    }
}

/// "Fail the append if any event matching `query` exists after position
/// `after`" (`None`: anywhere). Checked by the committer atomically with the
/// append's stream expectations, against every committed event and the events
/// earlier in the same commit group.
///
/// Every event counts, also one hidden by a delete or by stream metadata that
/// a scavenge has not removed yet: a condition errs on the side of a conflict
/// (the caller reads again and decides again), never of a lost update.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppendCondition {
    /// What the decision depended on.
    pub query: Query,
    /// The position the decision's read was consistent through: the last
    /// position it could have seen. `None`: no matching event may exist at all.
    pub after: Option<u64>,
}

impl AppendCondition {
    /// Fail if any event matching `query` exists after `after`.
    pub fn new(query: Query, after: Option<u64>) -> Self {
        Self { query, after }
    }
}

/// Checks an event's tags: at most [`MAX_TAGS_PER_EVENT`], each 1..=
/// [`MAX_TAG_BYTES`] bytes, none twice.
pub(crate) fn validate_tags(event: &uuid::Uuid, tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS_PER_EVENT {
        return Err(Error::LimitExceeded {
            what: "tags on one event",
            actual: tags.len() as u64,
            limit: MAX_TAGS_PER_EVENT as u64,
        });
    }
    let mut seen = HashSet::with_capacity(tags.len());
    for tag in tags {
        if tag.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "event {event} has an empty tag"
            )));
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err(Error::LimitExceeded {
                what: "tag size in bytes",
                actual: tag.len() as u64,
                limit: MAX_TAG_BYTES as u64,
            });
        }
        if !seen.insert(tag.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "event {event} carries the tag '{tag}' twice"
            )));
        }
    }
    Ok(())
}

/// Where a [`Cursor`] reads: a snapshot (reads) or the database as the
/// committer sees it (conditions: the committer is the only writer, so the
/// database holds exactly the committed events).
pub(crate) enum View<'a> {
    Snapshot(&'a SnapshotWithThreadMode<'a, DB>),
    Database(&'a DB),
}

impl<'a> View<'a> {
    fn iterator(&self, db: &'a DB, column_family: &str) -> DBRawIteratorWithThreadMode<'a, DB> {
        let handle = db
            .cf_handle(column_family)
            .expect("every column family is opened with the store");
        let options = ReadOptions::default();
        match self {
            View::Snapshot(snapshot) => snapshot.raw_iterator_cf_opt(handle, options),
            View::Database(db) => db.raw_iterator_cf_opt(handle, options),
        }
    }
}

/// The direction and bound every list of one cursor shares.
#[derive(Debug, Clone, Copy)]
struct Walk {
    forwards: bool,
    /// Forwards: the exclusive end (the head). Backwards the walk ends at 0.
    head: u64,
}

impl Walk {
    /// Whether `a` comes before `b` in the walk's order.
    fn before(self, a: u64, b: u64) -> bool {
        if self.forwards { a < b } else { a > b }
    }

    /// The first of two positions in the walk's order.
    fn first(self, a: u64, b: u64) -> u64 {
        if self.before(b, a) { b } else { a }
    }

    /// The last of two positions in the walk's order.
    fn last(self, a: u64, b: u64) -> u64 {
        if self.before(a, b) { b } else { a }
    }
}

/// One list of positions in index order: an index prefix, or the log itself.
struct Postings<'a> {
    iterator: DBRawIteratorWithThreadMode<'a, DB>,
    /// The index prefix; `None` walks the log's keys.
    prefix: Option<Vec<u8>>,
    /// The position the iterator stands on, or `None` when exhausted.
    current: Option<u64>,
}

impl Postings<'_> {
    fn key(&self, position: u64) -> Vec<u8> {
        match &self.prefix {
            Some(prefix) => {
                let mut key = prefix.clone();
                key.extend_from_slice(&position.to_be_bytes());
                key
            }
            None => codec::log_key(position).to_vec(),
        }
    }

    fn read_current(&mut self, walk: Walk) -> Result<()> {
        self.current = None;
        if !self.iterator.valid() {
            return self.iterator.status().map_err(Error::from);
        }
        let Some(key) = self.iterator.key() else {
            return Ok(());
        };
        let position = match &self.prefix {
            Some(prefix) => {
                if key.len() != prefix.len() + 8 || !key.starts_with(prefix) {
                    return Ok(());
                }
                codec::read_u64(&key[prefix.len()..])
            }
            None => {
                if key.len() != 8 {
                    return Ok(());
                }
                codec::read_u64(key)
            }
        };
        if !walk.forwards || position < walk.head {
            self.current = Some(position);
        }
        Ok(())
    }

    /// Moves to the first entry at or after `target` in the walk's order.
    fn seek(&mut self, target: u64, walk: Walk) -> Result<()> {
        let key = self.key(target);
        if walk.forwards {
            self.iterator.seek(&key);
        } else {
            self.iterator.seek_for_prev(&key);
        }
        self.read_current(walk)
    }

    fn advance(&mut self, walk: Walk) -> Result<()> {
        if walk.forwards {
            self.iterator.next();
        } else {
            self.iterator.prev();
        }
        self.read_current(walk)
    }
}

/// A set of positions built from postings lists: a list, the union of
/// several (any of an item's types; any of a query's items) or their
/// intersection (all of an item's tags, and one of its types). Every node
/// stands on its first position not yet taken, in the walk's order.
enum Node<'a> {
    List(Postings<'a>),
    Union(Vec<Node<'a>>),
    /// `children` is never empty; `done` once one of them is exhausted.
    Intersection {
        children: Vec<Node<'a>>,
        done: bool,
    },
}

impl Node<'_> {
    fn current(&self, walk: Walk) -> Option<u64> {
        match self {
            Node::List(list) => list.current,
            Node::Union(children) => children
                .iter()
                .filter_map(|child| child.current(walk))
                .reduce(|a, b| walk.first(a, b)),
            // Settled by `settle`: every child on the same position.
            Node::Intersection { done: true, .. } => None,
            Node::Intersection { children, .. } => children[0].current(walk),
        }
    }

    /// Moves every part to its first entry at or after `target`.
    fn seek(&mut self, target: u64, walk: Walk) -> Result<()> {
        match self {
            Node::List(list) => {
                if list
                    .current
                    .is_some_and(|current| walk.before(current, target))
                {
                    list.seek(target, walk)?;
                }
                Ok(())
            }
            Node::Union(children) => {
                for child in children {
                    child.seek(target, walk)?;
                }
                Ok(())
            }
            Node::Intersection { done: true, .. } => Ok(()),
            Node::Intersection { children, done } => {
                for child in children.iter_mut() {
                    child.seek(target, walk)?;
                }
                *done = !settle(children, walk)?;
                Ok(())
            }
        }
    }

    /// Moves past the current position.
    fn advance(&mut self, walk: Walk) -> Result<()> {
        let Some(current) = self.current(walk) else {
            return Ok(());
        };
        match self {
            Node::List(list) => list.advance(walk),
            Node::Union(children) => {
                for child in children {
                    if child.current(walk) == Some(current) {
                        child.advance(walk)?;
                    }
                }
                Ok(())
            }
            Node::Intersection { children, done } => {
                children[0].advance(walk)?;
                *done = !settle(children, walk)?;
                Ok(())
            }
        }
    }
}

/// Leapfrogs an intersection's children onto their first common position:
/// each child seeks to the furthest position any child stands on, until all
/// agree. Returns false when one child is exhausted (then so is the
/// intersection). Costs a seek per step, so the rarest list bounds the work,
/// whichever comes first in the item.
fn settle(children: &mut [Node<'_>], walk: Walk) -> Result<bool> {
    loop {
        let mut target: Option<u64> = None;
        for child in children.iter() {
            let Some(position) = child.current(walk) else {
                return Ok(false);
            };
            target = Some(target.map_or(position, |target| walk.last(target, position)));
        }
        let Some(target) = target else {
            return Ok(false);
        };
        if children
            .iter()
            .all(|child| child.current(walk) == Some(target))
        {
            return Ok(true);
        }
        for child in children.iter_mut() {
            child.seek(target, walk)?;
        }
    }
}

/// The positions of the events a query's indexes match, in read order, each
/// once: the union over its items of (all of the item's tags) ∩ (any of its
/// types), from `tag_index` and `type_index`; the whole log when the query
/// matches everything. The indexes match exactly what [`Query::matches`]
/// does, but callers still check each record (its crc, and the query, which
/// costs nothing more once the record is decoded).
pub(crate) struct Cursor<'a> {
    root: Node<'a>,
    walk: Walk,
}

impl<'a> Cursor<'a> {
    /// A cursor over the matches of `query` from `start` (inclusive) in
    /// `direction`, below `head`.
    pub(crate) fn new(
        db: &'a DB,
        view: &View<'a>,
        query: &Query,
        start: u64,
        head: u64,
        direction: Direction,
    ) -> Result<Self> {
        let walk = Walk {
            forwards: direction == Direction::Forwards,
            head,
        };
        let list = |column_family: &str, prefix: Option<Vec<u8>>| -> Result<Node<'a>> {
            let mut postings = Postings {
                iterator: view.iterator(db, column_family),
                prefix,
                current: None,
            };
            postings.seek(start, walk)?;
            Ok(Node::List(postings))
        };
        let root = if query.matches_everything() {
            list(cf::LOG, None)?
        } else {
            let mut items = Vec::with_capacity(query.items.len());
            for item in &query.items {
                let mut required = Vec::new();
                // Each tag once (an item may name one twice).
                let tags: HashSet<&str> = item.tags.iter().map(String::as_str).collect();
                for tag in tags {
                    required.push(list(cf::TAG_INDEX, Some(codec::name_index_prefix(tag)))?);
                }
                if !item.types.is_empty() {
                    let types: HashSet<&str> = item.types.iter().map(String::as_str).collect();
                    let mut any_type = Vec::with_capacity(types.len());
                    for event_type in types {
                        any_type.push(list(
                            cf::TYPE_INDEX,
                            Some(codec::name_index_prefix(event_type)),
                        )?);
                    }
                    required.push(Node::Union(any_type));
                }
                let node = if required.len() == 1 {
                    required.pop().expect("one part")
                } else {
                    let done = !settle(&mut required, walk)?;
                    Node::Intersection {
                        children: required,
                        done,
                    }
                };
                items.push(node);
            }
            Node::Union(items)
        };
        Ok(Self { root, walk })
    }

    /// The next matching position, or `None` at the end.
    pub(crate) fn next_position(&mut self) -> Result<Option<u64>> {
        let current = self.root.current(self.walk);
        if current.is_some() {
            self.root.advance(self.walk)?;
        }
        Ok(current)
    }

    /// The position the cursor stands on, without moving.
    pub(crate) fn peek(&self) -> Option<u64> {
        self.root.current(self.walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags<'a>(tags: &'a [&'a str]) -> impl Iterator<Item = &'a str> + Clone {
        tags.iter().copied()
    }

    #[test]
    fn an_item_needs_one_of_its_types_and_all_of_its_tags() {
        let item = QueryItem::types(["Registered", "Renamed"]).with_tags(["user:1", "tenant:a"]);
        assert!(item.matches("Registered", tags(&["tenant:a", "user:1", "x"])));
        assert!(!item.matches("Registered", tags(&["user:1"])));
        assert!(!item.matches("Deleted", tags(&["tenant:a", "user:1"])));
        assert!(QueryItem::tags(["user:1"]).matches("Anything", tags(&["user:1"])));
        assert!(QueryItem::types(["A"]).matches("A", tags(&[])));
    }

    #[test]
    fn a_query_matches_when_any_item_does_and_no_items_match_everything() {
        let query = Query::of([QueryItem::types(["A"]), QueryItem::tags(["t"])]);
        assert!(query.matches("A", tags(&[])));
        assert!(query.matches("B", tags(&["t"])));
        assert!(!query.matches("B", tags(&["u"])));
        assert!(Query::all().matches("B", tags(&[])));
        assert!(Query::all().matches_everything());
        assert!(Query::of([QueryItem::default()]).matches_everything());
        assert!(!query.matches_everything());
    }

    #[test]
    fn query_limits_hold_in_counts_and_bytes() {
        let many_items = Query::of((0..=MAX_QUERY_ITEMS).map(|i| QueryItem::tags([i.to_string()])));
        assert!(matches!(
            many_items.validate(),
            Err(Error::LimitExceeded {
                what: "items in one query",
                ..
            })
        ));
        let many_tags = Query::of([QueryItem::tags(
            (0..=MAX_QUERY_ITEM_VALUES).map(|i| i.to_string()),
        )]);
        assert!(matches!(
            many_tags.validate(),
            Err(Error::LimitExceeded {
                what: "tags in one query item",
                ..
            })
        ));
        let big = "x".repeat(MAX_QUERY_BYTES / 2 + 1);
        let too_big = Query::of([QueryItem::tags([big.clone()]), QueryItem::types([big])]);
        assert!(matches!(
            too_big.validate(),
            Err(Error::LimitExceeded {
                what: "query size in bytes",
                ..
            })
        ));
        let empty = Query::of([QueryItem::tags([""])]);
        assert!(matches!(empty.validate(), Err(Error::InvalidArgument(_))));
        assert!(Query::of([QueryItem::tags(["a"])]).validate().is_ok());
    }

    #[test]
    fn event_tags_are_bounded_non_empty_and_distinct() {
        let id = uuid::Uuid::new_v4();
        let owned = |tags: &[&str]| tags.iter().map(|tag| tag.to_string()).collect::<Vec<_>>();
        assert!(validate_tags(&id, &owned(&["a", "b"])).is_ok());
        assert!(matches!(
            validate_tags(&id, &owned(&["a", "a"])),
            Err(Error::InvalidArgument(message)) if message.contains("twice")
        ));
        assert!(matches!(
            validate_tags(&id, &owned(&[""])),
            Err(Error::InvalidArgument(_))
        ));
        let long = "t".repeat(MAX_TAG_BYTES + 1);
        assert!(matches!(
            validate_tags(&id, &[long]),
            Err(Error::LimitExceeded {
                what: "tag size in bytes",
                ..
            })
        ));
        let many: Vec<String> = (0..=MAX_TAGS_PER_EVENT).map(|i| i.to_string()).collect();
        assert!(matches!(
            validate_tags(&id, &many),
            Err(Error::LimitExceeded {
                what: "tags on one event",
                ..
            })
        ));
    }
}
