//! The customers service: registration (unique email, argon2 password hash),
//! profiles, credit set by a manager, and the saga step that reserves credit
//! for an order.
//!
//! Writes only `customer-*` streams; an email address is held once through a
//! DCB condition on the registrations' `email:` tags (see [`register`]). Its read model owns the
//! `customers` table. Password hashes never leave this module's aggregate:
//! the read model does not store them.

use std::collections::{HashMap, HashSet};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cairn_client::{
    Client, Decider, Decision, ExpectedRevision, Filter, Query, QueryItem, ReadOptions,
    RecordedEvent, StreamAppend,
};
use rusqlite::Transaction;
use uuid::Uuid;

use crate::catalog::millis;
use crate::error::{Result, ShopError};
use crate::events::{
    CUSTOMER, CustomerEvent, OrderEvent, ProductEvent, decode, derived_id, encode, id_of, stream,
};
use crate::eventstore::{Aggregate, execute, load};
use crate::readmodel::Projection;
use crate::saga::Handler;
use crate::validate;

/// A customer as their stream tells it.
#[derive(Debug, Clone, Default)]
pub struct Customer {
    /// Whether they registered (a stream holding only refusals has not).
    pub exists: bool,
    /// Name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Credit available for new orders, in cents.
    pub credit_cents: i64,
    /// Credit held for orders, by order; removed when released.
    pub reservations: HashMap<Uuid, i64>,
    /// Orders already decided (reserved or refused): the idempotency record.
    pub decided: HashSet<Uuid>,
}

impl Aggregate for Customer {
    type Event = CustomerEvent;
    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered {
                name,
                email,
                password_hash,
            } => {
                self.exists = true;
                self.name = name.clone();
                self.email = email.clone();
                self.password_hash = password_hash.clone();
            }
            CustomerEvent::ProfileChanged {
                name,
                password_hash,
            } => {
                self.name = name.clone();
                if let Some(hash) = password_hash {
                    self.password_hash = hash.clone();
                }
            }
            CustomerEvent::CreditSet { credit_cents } => self.credit_cents = *credit_cents,
            CustomerEvent::CreditReserved {
                order_id,
                total_cents,
                ..
            } => {
                self.credit_cents -= total_cents;
                self.reservations.insert(*order_id, *total_cents);
                self.decided.insert(*order_id);
            }
            CustomerEvent::CreditRefused { order_id, .. } => {
                self.decided.insert(*order_id);
            }
            CustomerEvent::CreditReleased {
                order_id,
                amount_cents,
            } => {
                self.credit_cents += amount_cents;
                self.reservations.remove(order_id);
            }
        }
    }
}

/// The DCB tag of one email address: `email:<uuid v5 of mailto:address>`
/// (a fixed 42 bytes, however long the address).
fn email_tag(email: &str) -> String {
    let key = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("mailto:{email}").as_bytes());
    format!("email:{key}")
}

/// The events that decide who holds an email address: registrations carrying
/// its tag. The first one holds it.
fn email_query(email: &str) -> Query {
    Query::of([QueryItem::types([REGISTERED]).with_tags([email_tag(email)])])
}

/// `CustomerRegistered`, the event type [`email_query`] looks for.
const REGISTERED: &str = "CustomerRegistered";

/// Hashes a password with argon2id and a random salt (CPU-heavy: runs on a
/// blocking thread).
async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        // 16 bytes from the OS generator (a v4 uuid is 122 random bits).
        let salt = SaltString::encode_b64(Uuid::new_v4().as_bytes())
            .map_err(|error| ShopError::Internal(format!("salt: {error}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| ShopError::Internal(format!("hashing a password: {error}")))
    })
    .await
    .map_err(|error| ShopError::Internal(error.to_string()))?
}

/// Registers a customer; returns their id. "An email address is registered
/// once" is a DCB condition, not a claim stream: the registration event carries
/// the address's tag, and it is appended only if no registration with that tag
/// was written after the read that found none (else the decision is made
/// again, and refused).
pub async fn register(client: &Client, name: &str, email: &str, password: &str) -> Result<Uuid> {
    let name = validate::text("name", name)?;
    let email = validate::email(email)?;
    let password_hash = hash_password(validate::password(password)?.to_owned()).await?;
    let id = Uuid::new_v4();
    let registered = CustomerEvent::CustomerRegistered {
        name,
        email: email.clone(),
        password_hash,
    };
    let event = encode(&registered, Uuid::new_v4())?.tags([email_tag(&email)]);
    let decided = Decider::new(client.clone(), email_query(&email))
        .run(
            || false,
            |taken, _| *taken = true,
            |taken| {
                if *taken {
                    return Err(ShopError::Conflict(format!(
                        "a customer with email '{email}' is already registered"
                    )));
                }
                Ok(Decision::append(
                    vec![StreamAppend::new(
                        stream(CUSTOMER, id),
                        ExpectedRevision::NoStream,
                        vec![event.clone()],
                    )],
                    id,
                ))
            },
        )
        .await?;
    Ok(decided.value)
}

/// The customer holding `email`: the stream of the first registration
/// carrying its tag.
async fn holder_of(client: &Client, email: &str) -> Result<Option<Uuid>> {
    let mut registrations = client
        .read_query(email_query(email), ReadOptions::forwards().max_count(1))
        .await?;
    match registrations.next_event().await? {
        Some(event) => Ok(Some(id_of(&event.stream)?)),
        None => Ok(None),
    }
}

/// The customer with this email and password, if both match.
pub async fn login(client: &Client, email: &str, password: &str) -> Result<Uuid> {
    let refused = || ShopError::Invalid("unknown email or wrong password".into());
    let email = validate::email(email).map_err(|_| refused())?;
    let customer_id = holder_of(client, &email).await?.ok_or_else(refused)?;
    let customer = load::<Customer>(client, &stream(CUSTOMER, customer_id))
        .await?
        .state;
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&customer.password_hash).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    })
    .await
    .map_err(|error| ShopError::Internal(error.to_string()))?;
    if matches {
        Ok(customer_id)
    } else {
        Err(refused())
    }
}

/// Changes a customer's name and/or password.
pub async fn change_profile(
    client: &Client,
    id: Uuid,
    name: Option<&str>,
    password: Option<&str>,
) -> Result<()> {
    if name.is_none() && password.is_none() {
        return Err(ShopError::Invalid(
            "nothing to change: give name or password".into(),
        ));
    }
    let name = name.map(|name| validate::text("name", name)).transpose()?;
    let password_hash = match password {
        Some(password) => Some(hash_password(validate::password(password)?.to_owned()).await?),
        None => None,
    };
    let event_id = Uuid::new_v4();
    execute::<Customer, _>(client, &stream(CUSTOMER, id), |customer| {
        require(customer, id)?;
        let event = CustomerEvent::ProfileChanged {
            name: name.clone().unwrap_or_else(|| customer.name.clone()),
            password_hash: password_hash.clone(),
        };
        Ok((vec![encode(&event, event_id)?], ()))
    })
    .await
}

/// A manager sets the credit available to a customer for new orders.
pub async fn set_credit(client: &Client, id: Uuid, credit_cents: i64) -> Result<()> {
    let credit_cents = validate::cents("credit", credit_cents)?;
    let event = encode(&CustomerEvent::CreditSet { credit_cents }, Uuid::new_v4())?;
    execute::<Customer, _>(client, &stream(CUSTOMER, id), |customer| {
        require(customer, id)?;
        Ok((vec![event.clone()], ()))
    })
    .await
}

fn require(customer: &Customer, id: Uuid) -> Result<()> {
    if !customer.exists {
        return Err(ShopError::NotFound {
            what: "customer",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Saga step 2 and its compensation: on `StockReserved` reserve the amount or
/// refuse; on `OrderRejected` give back what was reserved for the order.
#[derive(Debug, Default)]
pub struct CreditHandler;

impl Handler for CreditHandler {
    fn name(&self) -> &'static str {
        "customers-credit"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["product-".into(), "order-".into()],
            type_prefixes: vec!["StockReserved".into(), "OrderRejected".into()],
            ..Filter::default()
        }
    }

    async fn handle(&self, client: &Client, event: &RecordedEvent) -> Result<()> {
        if event.stream.starts_with("order-") {
            let order_id = id_of(&event.stream)?;
            let OrderEvent::OrderRejected { customer_id, .. } = decode::<OrderEvent>(event)? else {
                return Ok(());
            };
            let release_id = derived_id(event.id, "customers-release");
            return execute::<Customer, _>(client, &stream(CUSTOMER, customer_id), |customer| {
                match customer.reservations.get(&order_id) {
                    Some(&amount_cents) => {
                        let release = CustomerEvent::CreditReleased {
                            order_id,
                            amount_cents,
                        };
                        Ok((vec![encode(&release, release_id)?], ()))
                    }
                    None => Ok((vec![], ())),
                }
            })
            .await;
        }
        let product_id = id_of(&event.stream)?;
        let ProductEvent::StockReserved {
            order_id,
            customer_id,
            quantity,
            unit_price_cents,
            total_cents,
        } = decode::<ProductEvent>(event)?
        else {
            return Ok(());
        };
        let decision_id = derived_id(event.id, "customers-decision");
        execute::<Customer, _>(client, &stream(CUSTOMER, customer_id), |customer| {
            if customer.decided.contains(&order_id) {
                return Ok((vec![], ()));
            }
            let decision = if !customer.exists {
                CustomerEvent::CreditRefused {
                    order_id,
                    reason: "no such customer".into(),
                }
            } else if customer.credit_cents < total_cents {
                CustomerEvent::CreditRefused {
                    order_id,
                    reason: format!(
                        "credit of {} does not cover {}",
                        money(customer.credit_cents),
                        money(total_cents)
                    ),
                }
            } else {
                CustomerEvent::CreditReserved {
                    order_id,
                    product_id,
                    quantity,
                    unit_price_cents,
                    total_cents,
                }
            };
            Ok((vec![encode(&decision, decision_id)?], ()))
        })
        .await
    }
}

/// Cents as a decimal amount, e.g. `1250` -> `12.50`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        cents.unsigned_abs() / 100,
        cents.unsigned_abs() % 100
    )
}

/// The customers read model: `customers` (no password hashes).
#[derive(Debug, Default)]
pub struct CustomersProjection;

impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        "customers"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["customer-".into()],
            ..Filter::default()
        }
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS customers (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT NOT NULL,
             credit_cents INTEGER NOT NULL DEFAULT 0,
             reserved_cents INTEGER NOT NULL DEFAULT 0,
             registered_ms INTEGER NOT NULL
         );"
    }

    fn apply(&self, transaction: &Transaction<'_>, event: &RecordedEvent) -> Result<()> {
        let id = id_of(&event.stream)?.to_string();
        match decode::<CustomerEvent>(event)? {
            CustomerEvent::CustomerRegistered { name, email, .. } => {
                transaction.execute(
                    "INSERT OR REPLACE INTO customers (id, name, email, registered_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![id, name, email, millis(event)],
                )?;
            }
            CustomerEvent::ProfileChanged { name, .. } => {
                transaction.execute(
                    "UPDATE customers SET name = ?2 WHERE id = ?1",
                    rusqlite::params![id, name],
                )?;
            }
            CustomerEvent::CreditSet { credit_cents } => {
                transaction.execute(
                    "UPDATE customers SET credit_cents = ?2 WHERE id = ?1",
                    rusqlite::params![id, credit_cents],
                )?;
            }
            CustomerEvent::CreditReserved { total_cents, .. } => {
                transaction.execute(
                    "UPDATE customers SET credit_cents = credit_cents - ?2,
                         reserved_cents = reserved_cents + ?2 WHERE id = ?1",
                    rusqlite::params![id, total_cents],
                )?;
            }
            CustomerEvent::CreditReleased { amount_cents, .. } => {
                transaction.execute(
                    "UPDATE customers SET credit_cents = credit_cents + ?2,
                         reserved_cents = reserved_cents - ?2 WHERE id = ?1",
                    rusqlite::params![id, amount_cents],
                )?;
            }
            CustomerEvent::CreditRefused { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_prints_cents_as_decimal() {
        assert_eq!(money(1250), "12.50");
        assert_eq!(money(7), "0.07");
        assert_eq!(money(-120), "-1.20");
    }
}
