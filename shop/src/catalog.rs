//! The catalog service: categories and products (name, price, supplier, units
//! in stock), and the saga step that reserves stock for an order.
//!
//! Writes only `category-*` and `product-*` streams (and the snapshots of
//! the latter, `$snapshot-product-*`). Its read model owns the `categories`
//! and `products` tables.
//!
//! A product's stream grows with every order (stock reserved, refused,
//! released) without bound, so products load through a
//! [`cairn_client::Repository`] with snapshots: the latest snapshot, then
//! only the events after it ([`PRODUCT_SNAPSHOT_EVERY`]).

use std::collections::{HashMap, HashSet};

use cairn_client::{
    AggregateError, Client, CodecError, EventData, Filter, RecordedEvent, Repository,
};
use rusqlite::Transaction;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, ShopError};
use crate::events::{
    CATEGORY, CategoryEvent, OrderEvent, PRODUCT, ProductEvent, decode, derived_id, encode, id_of,
    stream,
};
use crate::eventstore::{Aggregate, execute, load};
use crate::readmodel::Projection;
use crate::saga::Handler;
use crate::validate;

/// A category as its stream tells it.
#[derive(Debug, Clone, Default)]
pub struct Category {
    /// Whether it was added.
    pub exists: bool,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Its name.
    pub name: String,
}

impl Aggregate for Category {
    type Event = CategoryEvent;
    fn apply(&mut self, event: &CategoryEvent) {
        match event {
            CategoryEvent::CategoryAdded { name } | CategoryEvent::CategoryRenamed { name } => {
                self.exists = true;
                self.name = name.clone();
            }
            CategoryEvent::CategoryDeleted {} => self.deleted = true,
        }
    }
}

/// A product as its stream tells it. Its snapshot is this struct as JSON
/// (schema [`PRODUCT_SNAPSHOT_SCHEMA`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Whether it was added (a stream holding only refusals has not).
    pub exists: bool,
    /// Whether it was withdrawn.
    pub deleted: bool,
    /// Its category.
    pub category_id: Uuid,
    /// Its name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: i64,
    /// Supplier.
    pub supplier: String,
    /// Units available for new orders.
    pub stock: u32,
    /// Units held for orders, by order; removed when released.
    pub reservations: HashMap<Uuid, u32>,
    /// Orders already decided (reserved or refused): the idempotency record.
    pub decided: HashSet<Uuid>,
}

impl Aggregate for Product {
    type Event = ProductEvent;
    fn apply(&mut self, event: &ProductEvent) {
        self.fold(event);
    }
}

/// Products snapshot after this many events not covered by a snapshot.
pub const PRODUCT_SNAPSHOT_EVERY: u64 = 100;

/// The layout of product snapshots: bump it whenever [`Product`]'s fields
/// or [`Product::fold`] change, so older snapshots are ignored.
pub const PRODUCT_SNAPSHOT_SCHEMA: &str = "shop.product/1";

impl cairn_client::Aggregate for Product {
    type Event = ProductEvent;
    const SNAPSHOT_SCHEMA: &'static str = PRODUCT_SNAPSHOT_SCHEMA;

    fn decode(event: &RecordedEvent) -> std::result::Result<ProductEvent, CodecError> {
        Ok(decode::<ProductEvent>(event)?)
    }

    fn apply(&mut self, event: &ProductEvent) {
        self.fold(event);
    }

    fn to_snapshot(&self) -> std::result::Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(self)?)
    }

    fn from_snapshot(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The repository products load and change through (snapshots on).
pub fn products(client: &Client) -> Repository<Product> {
    Repository::new(client.clone()).snapshot_every(PRODUCT_SNAPSHOT_EVERY)
}

/// Loads a product (from its latest snapshot).
pub async fn load_product(client: &Client, id: Uuid) -> Result<Product> {
    products(client)
        .load(&stream(PRODUCT, id))
        .await
        .map(|loaded| loaded.state)
        .map_err(|error| shop_error(error.widen()))
}

/// Runs a command on a product (see [`crate::eventstore::execute`], whose
/// contract it keeps): an append refused because its (derived) event ids
/// were already written counts as done, a redelivered cause already had its
/// effect.
async fn execute_product<T: Clone>(
    client: &Client,
    id: Uuid,
    mut decide: impl FnMut(&Product) -> Result<(Vec<EventData>, T)>,
) -> Result<T> {
    let mut decided = None;
    let outcome = products(client)
        .execute(&stream(PRODUCT, id), |product| {
            let (events, output) = decide(product)?;
            decided = Some(output.clone());
            Ok((events, output))
        })
        .await;
    match outcome {
        Ok(executed) => Ok(executed.output),
        Err(AggregateError::Client(cairn_client::Error::DuplicateEventId(_))) => decided
            .ok_or_else(|| ShopError::Internal("a duplicate event id before any decision".into())),
        Err(error) => Err(shop_error(error)),
    }
}

/// A repository failure as the shop's error.
fn shop_error(error: AggregateError<ShopError>) -> ShopError {
    match error {
        AggregateError::Rejected(error) => error,
        AggregateError::Client(error) => ShopError::Cairn(error),
        AggregateError::Conflict { .. } => ShopError::Conflict(error.to_string()),
        other => ShopError::BadEvent(other.to_string()),
    }
}

impl Product {
    /// Folds one event in (both aggregate traits' `apply`).
    fn fold(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductAdded {
                category_id,
                name,
                price_cents,
                supplier,
                stock,
            } => {
                self.exists = true;
                self.category_id = *category_id;
                self.name = name.clone();
                self.price_cents = *price_cents;
                self.supplier = supplier.clone();
                self.stock = *stock;
            }
            ProductEvent::ProductDetailsChanged {
                category_id,
                name,
                supplier,
            } => {
                self.category_id = *category_id;
                self.name = name.clone();
                self.supplier = supplier.clone();
            }
            ProductEvent::PriceChanged { price_cents } => self.price_cents = *price_cents,
            ProductEvent::StockSet { stock } => self.stock = *stock,
            ProductEvent::ProductDeleted {} => self.deleted = true,
            ProductEvent::StockReserved {
                order_id, quantity, ..
            } => {
                self.stock = self.stock.saturating_sub(*quantity);
                self.reservations.insert(*order_id, *quantity);
                self.decided.insert(*order_id);
            }
            ProductEvent::StockRefused { order_id, .. } => {
                self.decided.insert(*order_id);
            }
            ProductEvent::StockReleased { order_id, quantity } => {
                self.stock = self.stock.saturating_add(*quantity);
                self.reservations.remove(order_id);
            }
        }
    }
}

/// A new product, as a manager enters it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    /// Its category (must exist).
    pub category_id: Uuid,
    /// Name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: i64,
    /// Supplier.
    pub supplier: String,
    /// Units in stock.
    pub stock: u32,
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductChanges {
    /// New category (must exist).
    pub category_id: Option<Uuid>,
    /// New name.
    pub name: Option<String>,
    /// New unit price in cents.
    pub price_cents: Option<i64>,
    /// New supplier.
    pub supplier: Option<String>,
    /// Units available from now on.
    pub stock: Option<u32>,
}

/// Adds a category; returns its id.
pub async fn add_category(client: &Client, name: &str) -> Result<Uuid> {
    let name = validate::text("category name", name)?;
    let id = Uuid::new_v4();
    let event = encode(&CategoryEvent::CategoryAdded { name }, Uuid::new_v4())?;
    execute::<Category, _>(client, &stream(CATEGORY, id), |_| {
        Ok((vec![event.clone()], id))
    })
    .await
}

/// Renames a category.
pub async fn rename_category(client: &Client, id: Uuid, name: &str) -> Result<()> {
    let name = validate::text("category name", name)?;
    let event = encode(&CategoryEvent::CategoryRenamed { name }, Uuid::new_v4())?;
    execute::<Category, _>(client, &stream(CATEGORY, id), |category| {
        live_category(category, id)?;
        Ok((vec![event.clone()], ()))
    })
    .await
}

/// Deletes a category (its products stay, in a deleted category).
pub async fn delete_category(client: &Client, id: Uuid) -> Result<()> {
    let event = encode(&CategoryEvent::CategoryDeleted {}, Uuid::new_v4())?;
    execute::<Category, _>(client, &stream(CATEGORY, id), |category| {
        live_category(category, id)?;
        Ok((vec![event.clone()], ()))
    })
    .await
}

fn live_category(category: &Category, id: Uuid) -> Result<()> {
    if !category.exists || category.deleted {
        return Err(ShopError::NotFound {
            what: "category",
            id: id.to_string(),
        });
    }
    Ok(())
}

async fn require_category(client: &Client, id: Uuid) -> Result<()> {
    live_category(
        &load::<Category>(client, &stream(CATEGORY, id)).await?.state,
        id,
    )
}

/// Adds a product; returns its id.
pub async fn add_product(client: &Client, product: NewProduct) -> Result<Uuid> {
    let event = ProductEvent::ProductAdded {
        category_id: product.category_id,
        name: validate::text("product name", &product.name)?,
        price_cents: validate::cents("price", product.price_cents)?,
        supplier: validate::text("supplier", &product.supplier)?,
        stock: product.stock,
    };
    require_category(client, product.category_id).await?;
    let id = Uuid::new_v4();
    let event = encode(&event, Uuid::new_v4())?;
    execute_product(client, id, |_| Ok((vec![event.clone()], id))).await
}

/// Changes a product's details, price and/or stock in one atomic append.
pub async fn update_product(client: &Client, id: Uuid, changes: ProductChanges) -> Result<()> {
    let name = changes
        .name
        .as_deref()
        .map(|name| validate::text("product name", name))
        .transpose()?;
    let supplier = changes
        .supplier
        .as_deref()
        .map(|s| validate::text("supplier", s))
        .transpose()?;
    let price = changes
        .price_cents
        .map(|price| validate::cents("price", price))
        .transpose()?;
    if let Some(category_id) = changes.category_id {
        require_category(client, category_id).await?;
    }
    // Ids fixed before the loop: a retry after a lost response is a replay.
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    execute_product(client, id, |product| {
        if !product.exists || product.deleted {
            return Err(ShopError::NotFound {
                what: "product",
                id: id.to_string(),
            });
        }
        let mut events = Vec::new();
        if name.is_some() || supplier.is_some() || changes.category_id.is_some() {
            let event = ProductEvent::ProductDetailsChanged {
                category_id: changes.category_id.unwrap_or(product.category_id),
                name: name.clone().unwrap_or_else(|| product.name.clone()),
                supplier: supplier.clone().unwrap_or_else(|| product.supplier.clone()),
            };
            events.push(encode(&event, ids[0])?);
        }
        if let Some(price_cents) = price {
            events.push(encode(&ProductEvent::PriceChanged { price_cents }, ids[1])?);
        }
        if let Some(stock) = changes.stock {
            events.push(encode(&ProductEvent::StockSet { stock }, ids[2])?);
        }
        if events.is_empty() {
            return Err(ShopError::Invalid(
                "nothing to change: give name, price_cents, supplier, category_id or stock".into(),
            ));
        }
        Ok((events, ()))
    })
    .await
}

/// Withdraws a product.
pub async fn delete_product(client: &Client, id: Uuid) -> Result<()> {
    let event = encode(&ProductEvent::ProductDeleted {}, Uuid::new_v4())?;
    execute_product(client, id, |product| {
        if !product.exists || product.deleted {
            return Err(ShopError::NotFound {
                what: "product",
                id: id.to_string(),
            });
        }
        Ok((vec![event.clone()], ()))
    })
    .await
}

/// Saga step 1 and its compensation: on `OrderPlaced` reserve the units or
/// refuse; on `OrderRejected` give back what was reserved for the order.
#[derive(Debug, Default)]
pub struct StockHandler;

impl Handler for StockHandler {
    fn name(&self) -> &'static str {
        "catalog-stock"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["order-".into()],
            type_prefixes: vec!["OrderPlaced".into(), "OrderRejected".into()],
            ..Filter::default()
        }
    }

    async fn handle(&self, client: &Client, event: &RecordedEvent) -> Result<()> {
        let order_id = id_of(&event.stream)?;
        match decode::<OrderEvent>(event)? {
            OrderEvent::OrderPlaced {
                customer_id,
                product_id,
                quantity,
            } => {
                let decision_id = derived_id(event.id, "catalog-decision");
                execute_product(client, product_id, |product| {
                    if product.decided.contains(&order_id) {
                        return Ok((vec![], ()));
                    }
                    let refuse = |reason: String| ProductEvent::StockRefused { order_id, reason };
                    let decision = if !product.exists {
                        refuse("no such product".into())
                    } else if product.deleted {
                        refuse(format!("{} is no longer sold", product.name))
                    } else if product.stock < quantity {
                        refuse(format!(
                            "only {} of {} in stock, {quantity} ordered",
                            product.stock, product.name
                        ))
                    } else {
                        let total_cents = i64::from(quantity) * product.price_cents;
                        ProductEvent::StockReserved {
                            order_id,
                            customer_id,
                            quantity,
                            unit_price_cents: product.price_cents,
                            total_cents,
                        }
                    };
                    Ok((vec![encode(&decision, decision_id)?], ()))
                })
                .await
            }
            OrderEvent::OrderRejected { product_id, .. } => {
                let release_id = derived_id(event.id, "catalog-release");
                execute_product(client, product_id, |product| {
                    match product.reservations.get(&order_id) {
                        Some(&quantity) => {
                            let release = ProductEvent::StockReleased { order_id, quantity };
                            Ok((vec![encode(&release, release_id)?], ()))
                        }
                        None => Ok((vec![], ())),
                    }
                })
                .await
            }
            OrderEvent::OrderApproved { .. } => Ok(()),
        }
    }
}

/// The catalog read model: `categories` and `products`.
#[derive(Debug, Default)]
pub struct CatalogProjection;

impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["category-".into(), "product-".into()],
            ..Filter::default()
        }
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS categories (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             deleted INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS products (
             id TEXT PRIMARY KEY,
             category_id TEXT NOT NULL,
             name TEXT NOT NULL,
             price_cents INTEGER NOT NULL,
             supplier TEXT NOT NULL,
             stock INTEGER NOT NULL,
             reserved INTEGER NOT NULL DEFAULT 0,
             deleted INTEGER NOT NULL DEFAULT 0,
             updated_ms INTEGER NOT NULL
         );"
    }

    fn apply(&self, transaction: &Transaction<'_>, event: &RecordedEvent) -> Result<()> {
        let id = id_of(&event.stream)?.to_string();
        if event.stream.starts_with("category-") {
            match decode::<CategoryEvent>(event)? {
                CategoryEvent::CategoryAdded { name } => {
                    transaction.execute(
                        "INSERT OR REPLACE INTO categories (id, name) VALUES (?1, ?2)",
                        rusqlite::params![id, name],
                    )?;
                }
                CategoryEvent::CategoryRenamed { name } => {
                    transaction.execute(
                        "UPDATE categories SET name = ?2 WHERE id = ?1",
                        rusqlite::params![id, name],
                    )?;
                }
                CategoryEvent::CategoryDeleted {} => {
                    transaction
                        .execute("UPDATE categories SET deleted = 1 WHERE id = ?1", [&id])?;
                }
            }
            return Ok(());
        }
        let at = millis(event);
        let (sql, params): (&str, Vec<rusqlite::types::Value>) = match decode::<ProductEvent>(
            event,
        )? {
            ProductEvent::ProductAdded {
                category_id,
                name,
                price_cents,
                supplier,
                stock,
            } => (
                "INSERT OR REPLACE INTO products
                     (id, category_id, name, price_cents, supplier, stock, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                vec![
                    id.into(),
                    category_id.to_string().into(),
                    name.into(),
                    price_cents.into(),
                    supplier.into(),
                    i64::from(stock).into(),
                    at.into(),
                ],
            ),
            ProductEvent::ProductDetailsChanged {
                category_id,
                name,
                supplier,
            } => (
                "UPDATE products SET category_id = ?2, name = ?3, supplier = ?4, updated_ms = ?5
                     WHERE id = ?1",
                vec![
                    id.into(),
                    category_id.to_string().into(),
                    name.into(),
                    supplier.into(),
                    at.into(),
                ],
            ),
            ProductEvent::PriceChanged { price_cents } => (
                "UPDATE products SET price_cents = ?2, updated_ms = ?3 WHERE id = ?1",
                vec![id.into(), price_cents.into(), at.into()],
            ),
            ProductEvent::StockSet { stock } => (
                "UPDATE products SET stock = ?2, updated_ms = ?3 WHERE id = ?1",
                vec![id.into(), i64::from(stock).into(), at.into()],
            ),
            ProductEvent::ProductDeleted {} => (
                "UPDATE products SET deleted = 1, updated_ms = ?2 WHERE id = ?1",
                vec![id.into(), at.into()],
            ),
            ProductEvent::StockReserved { quantity, .. } => (
                "UPDATE products SET stock = stock - ?2, reserved = reserved + ?2, updated_ms = ?3
                     WHERE id = ?1",
                vec![id.into(), i64::from(quantity).into(), at.into()],
            ),
            ProductEvent::StockReleased { quantity, .. } => (
                "UPDATE products SET stock = stock + ?2, reserved = reserved - ?2, updated_ms = ?3
                     WHERE id = ?1",
                vec![id.into(), i64::from(quantity).into(), at.into()],
            ),
            ProductEvent::StockRefused { .. } => return Ok(()),
        };
        transaction.execute(sql, rusqlite::params_from_iter(params))?;
        Ok(())
    }
}

/// An event's commit time in milliseconds since the Unix epoch.
pub(crate) fn millis(event: &RecordedEvent) -> i64 {
    event
        .created
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use cairn_client::Aggregate as _;

    use super::*;

    #[test]
    fn a_product_snapshot_restores_the_state_it_was_taken_of() {
        let (order, refused) = (Uuid::new_v4(), Uuid::new_v4());
        let mut product = Product::default();
        for event in [
            ProductEvent::ProductAdded {
                category_id: Uuid::new_v4(),
                name: "Tea".into(),
                price_cents: 450,
                supplier: "Leaf & Co".into(),
                stock: 10,
            },
            ProductEvent::StockReserved {
                order_id: order,
                customer_id: Uuid::new_v4(),
                quantity: 3,
                unit_price_cents: 450,
                total_cents: 1350,
            },
            ProductEvent::StockRefused {
                order_id: refused,
                reason: "too many".into(),
            },
        ] {
            product.fold(&event);
        }
        let bytes = product.to_snapshot().expect("encode");
        let restored = Product::from_snapshot(&bytes).expect("decode");
        assert_eq!(restored, product);
        assert_eq!(restored.stock, 7);
        assert_eq!(restored.reservations.get(&order), Some(&3));
        assert!(restored.decided.contains(&refused));
        assert!(Product::from_snapshot(b"{\"exists\": 1}").is_err());
    }
}
