//! The shop on Cairn: four services that never call each other and share
//! nothing but the event store (DESIGN.md §7).
//!
//! - [`catalog`]: categories, products, stock; reserves stock for orders.
//! - [`customers`]: registration, profiles, credit; reserves credit.
//! - [`orders`]: places orders, approves or rejects them.
//! - [`accounting`]: invoices approved orders, revenue.
//!
//! Each service's command side loads aggregates from their streams and appends
//! with an expected revision ([`eventstore`]); its query side is an embedded
//! SQLite read model fed by a catch-up subscription ([`readmodel`]); its saga
//! handlers react to other services' events ([`saga`]).

pub mod accounting;
pub mod catalog;
pub mod cli;
pub mod customers;
pub mod error;
pub mod events;
pub mod eventstore;
pub mod gateway;
pub mod orders;
pub mod readmodel;
pub mod saga;
pub mod services;
pub mod validate;

pub use error::{Result, ShopError};
