//! The shop's events: one enum per stream category, their stream names, and
//! the JSON encoding (the variant name is the Cairn event type, its fields the
//! JSON data).
//!
//! Money is always an integer number of cents (`i64`), never a float.
//! Events are facts: fields are never removed or renamed once written.

use cairn_client::{EventData, RecordedEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, ShopError};

/// Product categories: `category-<id>`.
pub const CATEGORY: &str = "category";
/// Products, their stock and stock reservations: `product-<id>`.
pub const PRODUCT: &str = "product";
/// Customers, their credit and credit reservations: `customer-<id>`.
pub const CUSTOMER: &str = "customer";
/// Orders: `order-<id>`.
pub const ORDER: &str = "order";
/// Invoices, one per approved order: `invoice-<order id>`.
pub const INVOICE: &str = "invoice";
/// The gap-free invoice number sequence: event `n` assigns number `n + 1`.
pub const INVOICE_NUMBERS: &str = "invoicenumbers";

/// The stream of one entity of a category.
pub fn stream(category: &str, id: Uuid) -> String {
    format!("{category}-{id}")
}

/// The entity id in a stream name `<category>-<uuid>`.
pub fn id_of(stream: &str) -> Result<Uuid> {
    stream
        .split_once('-')
        .and_then(|(_, id)| Uuid::try_parse(id).ok())
        .ok_or_else(|| ShopError::BadEvent(format!("stream '{stream}' is not <category>-<uuid>")))
}

/// The id of an event caused by `cause` (another event's id): the same cause
/// always yields the same id, so a redelivered cause cannot write its effect
/// twice (Cairn rejects or replays a reused id). `effect` tells apart several
/// events caused by one cause.
pub fn derived_id(cause: Uuid, effect: &str) -> Uuid {
    Uuid::new_v5(&cause, effect.as_bytes())
}

/// Encodes an event: the externally tagged serde form `{"Type": {...}}` splits
/// into the Cairn event type and its JSON data.
pub fn encode<E: Serialize>(event: &E, id: Uuid) -> Result<EventData> {
    let value =
        serde_json::to_value(event).map_err(|error| ShopError::Internal(error.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ShopError::Internal(
            "an event must encode as a one-key object".into(),
        ));
    };
    let mut entries = map.into_iter();
    let (Some((event_type, data)), None) = (entries.next(), entries.next()) else {
        return Err(ShopError::Internal(
            "an event must encode as a one-key object".into(),
        ));
    };
    let data = serde_json::to_vec(&data).map_err(|error| ShopError::Internal(error.to_string()))?;
    Ok(EventData::json_text(event_type, data).id(id))
}

/// Decodes a recorded event into `E`; an event type `E` does not know is an
/// error (each stream category is written only with its own enum).
pub fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> Result<E> {
    let data: serde_json::Value = serde_json::from_slice(&event.data).map_err(|error| {
        ShopError::BadEvent(format!(
            "{} in '{}': {error}",
            event.event_type, event.stream
        ))
    })?;
    let tagged = serde_json::json!({ event.event_type.clone(): data });
    serde_json::from_value(tagged).map_err(|error| {
        ShopError::BadEvent(format!(
            "{} in '{}': {error}",
            event.event_type, event.stream
        ))
    })
}

/// Events of `category-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CategoryEvent {
    /// A manager created the category.
    CategoryAdded {
        /// Display name.
        name: String,
    },
    /// A manager renamed it.
    CategoryRenamed {
        /// New name.
        name: String,
    },
    /// A manager deleted it; its products stay but new ones cannot join it.
    CategoryDeleted {},
}

/// Events of `product-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductEvent {
    /// A manager added the product.
    ProductAdded {
        /// Its category.
        category_id: Uuid,
        /// Display name.
        name: String,
        /// Unit price in cents.
        price_cents: i64,
        /// Who supplies it.
        supplier: String,
        /// Units in stock, available for orders.
        stock: u32,
    },
    /// A manager changed its description.
    ProductDetailsChanged {
        /// Its category.
        category_id: Uuid,
        /// Display name.
        name: String,
        /// Who supplies it.
        supplier: String,
    },
    /// A manager fixed a new unit price; orders reserved later pay it.
    PriceChanged {
        /// Unit price in cents.
        price_cents: i64,
    },
    /// A manager counted the stock: units available from now on (reserved
    /// units are not part of it).
    StockSet {
        /// Units available.
        stock: u32,
    },
    /// A manager withdrew the product; later orders for it are refused.
    ProductDeleted {},
    /// The catalog took units out of stock for an order (saga step 1).
    StockReserved {
        /// The order.
        order_id: Uuid,
        /// Who ordered.
        customer_id: Uuid,
        /// Units taken.
        quantity: u32,
        /// Unit price at reservation time, in cents.
        unit_price_cents: i64,
        /// `quantity * unit_price_cents`.
        total_cents: i64,
    },
    /// The catalog could not serve an order.
    StockRefused {
        /// The order.
        order_id: Uuid,
        /// Why, for the customer.
        reason: String,
    },
    /// Compensation: units of a rejected order went back into stock.
    StockReleased {
        /// The order.
        order_id: Uuid,
        /// Units returned.
        quantity: u32,
    },
}

/// Events of `customer-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerEvent {
    /// A customer signed up.
    CustomerRegistered {
        /// Display name.
        name: String,
        /// Email address, lower-cased; unique among customers (a DCB
        /// condition on the event's `email:` tag, see `customers::register`).
        email: String,
        /// Argon2 PHC string; the password itself is never stored.
        password_hash: String,
    },
    /// The customer changed their profile.
    ProfileChanged {
        /// Display name.
        name: String,
        /// New password hash, when the password changed.
        password_hash: Option<String>,
    },
    /// A manager set the credit available for orders.
    CreditSet {
        /// Available credit in cents.
        credit_cents: i64,
    },
    /// Credit was set aside for an order (saga step 2).
    CreditReserved {
        /// The order.
        order_id: Uuid,
        /// The product.
        product_id: Uuid,
        /// Units.
        quantity: u32,
        /// Unit price in cents.
        unit_price_cents: i64,
        /// Amount reserved in cents.
        total_cents: i64,
    },
    /// The customer's credit could not cover an order.
    CreditRefused {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
    },
    /// Compensation: credit of a rejected order given back.
    CreditReleased {
        /// The order.
        order_id: Uuid,
        /// Amount in cents.
        amount_cents: i64,
    },
}

/// Events of `order-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// A customer ordered `quantity` units of one product.
    OrderPlaced {
        /// Who.
        customer_id: Uuid,
        /// What.
        product_id: Uuid,
        /// How many units.
        quantity: u32,
    },
    /// Stock and credit were reserved: the order is accepted.
    OrderApproved {
        /// Who.
        customer_id: Uuid,
        /// What.
        product_id: Uuid,
        /// How many units.
        quantity: u32,
        /// Unit price in cents.
        unit_price_cents: i64,
        /// Amount due in cents.
        total_cents: i64,
    },
    /// Stock or credit was refused: the order is closed, and what was already
    /// reserved for it is released by its owner (compensation).
    OrderRejected {
        /// Who.
        customer_id: Uuid,
        /// What.
        product_id: Uuid,
        /// Why, for the customer.
        reason: String,
    },
}

/// Events of `invoice-<order id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceEvent {
    /// Accounting billed an approved order.
    InvoiceIssued {
        /// Gap-free sequential number, from 1.
        number: u64,
        /// The order.
        order_id: Uuid,
        /// Who pays.
        customer_id: Uuid,
        /// What.
        product_id: Uuid,
        /// Units.
        quantity: u32,
        /// Unit price in cents.
        unit_price_cents: i64,
        /// Amount due in cents.
        total_cents: i64,
    },
}

/// Events of `invoicenumbers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceNumberEvent {
    /// Number `number` went to the invoice of `order_id`.
    InvoiceNumberAssigned {
        /// The number (the event's revision + 1).
        number: u64,
        /// The order billed.
        order_id: Uuid,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_splits_type_and_data_and_decode_joins_them() {
        let event = OrderEvent::OrderPlaced {
            customer_id: Uuid::nil(),
            product_id: Uuid::nil(),
            quantity: 3,
        };
        let id = Uuid::new_v4();
        let data = encode(&event, id).expect("encode");
        assert_eq!(data.event_type, "OrderPlaced");
        assert_eq!(data.id, id);
        let recorded = RecordedEvent {
            id,
            stream: "order-1".into(),
            revision: 0,
            position: 0,
            event_type: data.event_type.clone(),
            content_type: data.content_type.clone(),
            created: std::time::SystemTime::UNIX_EPOCH,
            metadata: data.metadata.clone(),
            data: data.data.clone(),
            tags: Vec::new(),
        };
        assert_eq!(decode::<OrderEvent>(&recorded).expect("decode"), event);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct_per_effect() {
        let cause = Uuid::new_v4();
        assert_eq!(derived_id(cause, "a"), derived_id(cause, "a"));
        assert_ne!(derived_id(cause, "a"), derived_id(cause, "b"));
    }

    #[test]
    fn id_of_rejects_foreign_stream_names() {
        let id = Uuid::new_v4();
        assert_eq!(id_of(&stream(ORDER, id)).expect("id"), id);
        assert!(id_of("order-42").is_err());
        assert!(id_of("numbers").is_err());
    }
}
