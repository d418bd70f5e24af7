//! The orders service: places orders (one product, a quantity) and closes them:
//! approved once credit is reserved, rejected when stock or credit is refused.
//! Its read model keeps every order's status and state history.
//!
//! Writes only `order-*` streams. Its read model owns the `orders` and
//! `order_history` tables.

use cairn_client::{Client, Filter, RecordedEvent};
use rusqlite::Transaction;
use uuid::Uuid;

use crate::catalog::millis;
use crate::customers::money;
use crate::error::{Result, ShopError};
use crate::events::{
    CustomerEvent, InvoiceEvent, ORDER, OrderEvent, ProductEvent, decode, derived_id, encode,
    id_of, stream,
};
use crate::eventstore::{Aggregate, execute};
use crate::readmodel::Projection;
use crate::saga::Handler;
use crate::validate;

/// Where an order stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    /// Not placed.
    #[default]
    Unknown,
    /// Placed, waiting for stock and credit.
    Placed,
    /// Approved: stock and credit reserved.
    Approved,
    /// Rejected.
    Rejected,
}

/// An order as its stream tells it.
#[derive(Debug, Clone, Default)]
pub struct Order {
    /// Status.
    pub status: Status,
    /// Who.
    pub customer_id: Uuid,
    /// What.
    pub product_id: Uuid,
    /// Units.
    pub quantity: u32,
}

impl Aggregate for Order {
    type Event = OrderEvent;
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                product_id,
                quantity,
            } => {
                self.status = Status::Placed;
                self.customer_id = *customer_id;
                self.product_id = *product_id;
                self.quantity = *quantity;
            }
            OrderEvent::OrderApproved { .. } => self.status = Status::Approved,
            OrderEvent::OrderRejected { .. } => self.status = Status::Rejected,
        }
    }
}

/// Places an order; returns its id. Whether it is approved is decided later,
/// by the saga: follow the order's status.
pub async fn place_order(
    client: &Client,
    customer_id: Uuid,
    product_id: Uuid,
    quantity: u32,
) -> Result<Uuid> {
    let quantity = validate::quantity(quantity)?;
    let id = Uuid::new_v4();
    let placed = encode(
        &OrderEvent::OrderPlaced {
            customer_id,
            product_id,
            quantity,
        },
        Uuid::new_v4(),
    )?;
    execute::<Order, _>(client, &stream(ORDER, id), |_| {
        Ok((vec![placed.clone()], id))
    })
    .await
}

/// Saga step 3: approves an order whose credit was reserved, rejects one whose
/// stock or credit was refused. An order is closed once: later outcomes for a
/// closed order change nothing.
#[derive(Debug, Default)]
pub struct DecisionHandler;

impl Handler for DecisionHandler {
    fn name(&self) -> &'static str {
        "orders-decision"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["product-".into(), "customer-".into()],
            type_prefixes: vec![
                "StockRefused".into(),
                "CreditReserved".into(),
                "CreditRefused".into(),
            ],
            ..Filter::default()
        }
    }

    async fn handle(&self, client: &Client, event: &RecordedEvent) -> Result<()> {
        enum Outcome {
            Approve {
                unit_price_cents: i64,
                total_cents: i64,
            },
            Reject(String),
        }
        let (order_id, outcome) = if event.stream.starts_with("product-") {
            match decode::<ProductEvent>(event)? {
                ProductEvent::StockRefused { order_id, reason } => {
                    (order_id, Outcome::Reject(reason))
                }
                _ => return Ok(()),
            }
        } else {
            match decode::<CustomerEvent>(event)? {
                CustomerEvent::CreditRefused { order_id, reason } => {
                    (order_id, Outcome::Reject(reason))
                }
                CustomerEvent::CreditReserved {
                    order_id,
                    unit_price_cents,
                    total_cents,
                    ..
                } => (
                    order_id,
                    Outcome::Approve {
                        unit_price_cents,
                        total_cents,
                    },
                ),
                _ => return Ok(()),
            }
        };
        let decision_id = derived_id(event.id, "orders-decision");
        execute::<Order, _>(client, &stream(ORDER, order_id), |order| {
            if order.status != Status::Placed {
                return Ok((vec![], ()));
            }
            let decision = match &outcome {
                Outcome::Approve {
                    unit_price_cents,
                    total_cents,
                } => OrderEvent::OrderApproved {
                    customer_id: order.customer_id,
                    product_id: order.product_id,
                    quantity: order.quantity,
                    unit_price_cents: *unit_price_cents,
                    total_cents: *total_cents,
                },
                Outcome::Reject(reason) => OrderEvent::OrderRejected {
                    customer_id: order.customer_id,
                    product_id: order.product_id,
                    reason: reason.clone(),
                },
            };
            Ok((vec![encode(&decision, decision_id)?], ()))
        })
        .await
    }
}

/// The orders read model: `orders` (current status) and `order_history` (one
/// row per saga step, in log order).
#[derive(Debug, Default)]
pub struct OrdersProjection;

impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec![
                "order-".into(),
                "product-".into(),
                "customer-".into(),
                "invoice-".into(),
            ],
            type_prefixes: vec![
                "Order".into(),
                "StockReserved".into(),
                "StockRefused".into(),
                "StockReleased".into(),
                "CreditReserved".into(),
                "CreditRefused".into(),
                "CreditReleased".into(),
                "InvoiceIssued".into(),
            ],
            ..Filter::default()
        }
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS orders (
             id TEXT PRIMARY KEY,
             customer_id TEXT NOT NULL,
             product_id TEXT NOT NULL,
             quantity INTEGER NOT NULL,
             status TEXT NOT NULL,
             reason TEXT,
             unit_price_cents INTEGER,
             total_cents INTEGER,
             invoice_number INTEGER,
             placed_ms INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id);
         CREATE TABLE IF NOT EXISTS order_history (
             order_id TEXT NOT NULL,
             position INTEGER NOT NULL,
             at_ms INTEGER NOT NULL,
             event_type TEXT NOT NULL,
             stream TEXT NOT NULL,
             status TEXT NOT NULL,
             detail TEXT NOT NULL,
             PRIMARY KEY (order_id, position)
         );"
    }

    fn apply(&self, transaction: &Transaction<'_>, event: &RecordedEvent) -> Result<()> {
        let at = millis(event);
        // (order, new status or None to keep it, human-readable detail)
        let (order_id, status, detail): (Uuid, Option<&str>, String) =
            if event.stream.starts_with("order-") {
                let order_id = id_of(&event.stream)?;
                match decode::<OrderEvent>(event)? {
                    OrderEvent::OrderPlaced {
                        customer_id,
                        product_id,
                        quantity,
                    } => {
                        transaction.execute(
                            "INSERT OR REPLACE INTO orders (id, customer_id, product_id, quantity,
                                 status, placed_ms, updated_ms)
                             VALUES (?1, ?2, ?3, ?4, 'placed', ?5, ?5)",
                            rusqlite::params![
                                order_id.to_string(),
                                customer_id.to_string(),
                                product_id.to_string(),
                                quantity,
                                at
                            ],
                        )?;
                        (
                            order_id,
                            Some("placed"),
                            format!("{quantity} units ordered"),
                        )
                    }
                    OrderEvent::OrderApproved {
                        unit_price_cents,
                        total_cents,
                        ..
                    } => {
                        transaction.execute(
                        "UPDATE orders SET unit_price_cents = ?2, total_cents = ?3 WHERE id = ?1",
                        rusqlite::params![order_id.to_string(), unit_price_cents, total_cents],
                    )?;
                        (
                            order_id,
                            Some("approved"),
                            format!("total {}", money(total_cents)),
                        )
                    }
                    OrderEvent::OrderRejected { reason, .. } => {
                        transaction.execute(
                            "UPDATE orders SET reason = ?2 WHERE id = ?1",
                            rusqlite::params![order_id.to_string(), reason],
                        )?;
                        (order_id, Some("rejected"), reason)
                    }
                }
            } else if event.stream.starts_with("product-") {
                match decode::<ProductEvent>(event)? {
                    ProductEvent::StockReserved {
                        order_id, quantity, ..
                    } => (
                        order_id,
                        Some("stock reserved"),
                        format!("{quantity} units reserved"),
                    ),
                    ProductEvent::StockRefused { order_id, reason } => {
                        (order_id, Some("stock refused"), reason)
                    }
                    ProductEvent::StockReleased { order_id, quantity } => {
                        (order_id, None, format!("{quantity} units released"))
                    }
                    _ => return Ok(()),
                }
            } else if event.stream.starts_with("customer-") {
                match decode::<CustomerEvent>(event)? {
                    CustomerEvent::CreditReserved {
                        order_id,
                        total_cents,
                        ..
                    } => (
                        order_id,
                        Some("credit reserved"),
                        format!("{} reserved", money(total_cents)),
                    ),
                    CustomerEvent::CreditRefused { order_id, reason } => {
                        (order_id, Some("credit refused"), reason)
                    }
                    CustomerEvent::CreditReleased {
                        order_id,
                        amount_cents,
                    } => (order_id, None, format!("{} released", money(amount_cents))),
                    _ => return Ok(()),
                }
            } else {
                let InvoiceEvent::InvoiceIssued {
                    order_id,
                    number,
                    total_cents,
                    ..
                } = decode::<InvoiceEvent>(event)?;
                transaction.execute(
                    "UPDATE orders SET invoice_number = ?2 WHERE id = ?1",
                    rusqlite::params![order_id.to_string(), number],
                )?;
                (
                    order_id,
                    None,
                    format!("invoice {number} for {}", money(total_cents)),
                )
            };
        let order = order_id.to_string();
        // A final status is never overwritten by a late intermediate step.
        if let Some(status) = status {
            transaction.execute(
                "UPDATE orders SET status = ?2, updated_ms = ?3
                 WHERE id = ?1 AND status NOT IN ('approved', 'rejected')",
                rusqlite::params![order, status, at],
            )?;
        }
        transaction.execute(
            "INSERT OR IGNORE INTO order_history
                 (order_id, position, at_ms, event_type, stream, status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, COALESCE((SELECT status FROM orders WHERE id = ?1), '?'), ?6)",
            rusqlite::params![
                order,
                i64::try_from(event.position).map_err(|_| ShopError::Internal("position".into()))?,
                at,
                event.event_type,
                event.stream,
                detail
            ],
        )?;
        Ok(())
    }
}
