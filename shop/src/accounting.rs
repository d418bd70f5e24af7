//! The accounting service: one invoice per approved order, numbered without
//! gaps, and the revenue (the sum of the invoices).
//!
//! Writes only `invoice-*` streams and the `invoicenumbers` sequence. Its read
//! model owns the `invoices` table.

use cairn_client::{Client, ExpectedRevision, Filter, ReadOptions, RecordedEvent, StreamAppend};
use rusqlite::Transaction;

use crate::catalog::millis;
use crate::error::{Result, ShopError};
use crate::events::{
    INVOICE, INVOICE_NUMBERS, InvoiceEvent, InvoiceNumberEvent, OrderEvent, decode, derived_id,
    encode, id_of, stream,
};
use crate::eventstore::backoff;
use crate::readmodel::Projection;
use crate::saga::Handler;

/// Most attempts to take the next invoice number under contention.
const MAX_ATTEMPTS: u32 = 64;

/// Saga step 4: issues the invoice of an approved order.
///
/// The invoice (`invoice-<order>`, must not exist) and its number (the next
/// event of `invoicenumbers`, at the expected revision) are written in one
/// atomic multi-stream append: numbers have no gaps and no order is billed
/// twice, even with several accounting instances.
#[derive(Debug, Default)]
pub struct InvoiceHandler;

impl Handler for InvoiceHandler {
    fn name(&self) -> &'static str {
        "accounting-invoice"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["order-".into()],
            type_prefixes: vec!["OrderApproved".into()],
            ..Filter::default()
        }
    }

    async fn handle(&self, client: &Client, event: &RecordedEvent) -> Result<()> {
        let order_id = id_of(&event.stream)?;
        let OrderEvent::OrderApproved {
            customer_id,
            product_id,
            quantity,
            unit_price_cents,
            total_cents,
        } = decode::<OrderEvent>(event)?
        else {
            return Ok(());
        };
        let invoice_stream = stream(INVOICE, order_id);
        for attempt in 0..MAX_ATTEMPTS {
            let last_number = client
                .read_stream(INVOICE_NUMBERS, ReadOptions::backwards().max_count(1))
                .await;
            let last_revision = match last_number {
                Ok(events) => match events.collect_all().await {
                    Ok(events) => events.first().map(|event| event.revision),
                    Err(cairn_client::Error::StreamNotFound { .. }) => None,
                    Err(error) => return Err(error.into()),
                },
                Err(cairn_client::Error::StreamNotFound { .. }) => None,
                Err(error) => return Err(error.into()),
            };
            let (number, expected) = match last_revision {
                Some(revision) => (revision + 2, ExpectedRevision::Exact(revision)),
                None => (1, ExpectedRevision::NoStream),
            };
            let issued = InvoiceEvent::InvoiceIssued {
                number,
                order_id,
                customer_id,
                product_id,
                quantity,
                unit_price_cents,
                total_cents,
            };
            let assigned = InvoiceNumberEvent::InvoiceNumberAssigned { number, order_id };
            let parts = vec![
                StreamAppend::new(
                    invoice_stream.clone(),
                    ExpectedRevision::NoStream,
                    vec![encode(&issued, derived_id(event.id, "invoice"))?],
                ),
                StreamAppend::new(
                    INVOICE_NUMBERS,
                    expected,
                    vec![encode(&assigned, derived_id(event.id, "invoice-number"))?],
                ),
            ];
            match client.append_multi(parts).await {
                Ok(_) | Err(cairn_client::Error::DuplicateEventId(_)) => return Ok(()),
                Err(cairn_client::Error::WrongExpectedRevision { stream, .. })
                    if stream == invoice_stream =>
                {
                    // Already billed (a redelivery, or another instance won).
                    return Ok(());
                }
                Err(cairn_client::Error::WrongExpectedRevision { .. }) => backoff(attempt).await,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ShopError::Conflict(format!(
            "no invoice number for order {order_id} after {MAX_ATTEMPTS} attempts"
        )))
    }
}

/// The accounting read model: `invoices`; revenue is `SUM(total_cents)`.
#[derive(Debug, Default)]
pub struct AccountingProjection;

impl Projection for AccountingProjection {
    fn name(&self) -> &'static str {
        "accounting"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["invoice-".into()],
            ..Filter::default()
        }
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS invoices (
             order_id TEXT PRIMARY KEY,
             number INTEGER NOT NULL UNIQUE,
             customer_id TEXT NOT NULL,
             product_id TEXT NOT NULL,
             quantity INTEGER NOT NULL,
             unit_price_cents INTEGER NOT NULL,
             total_cents INTEGER NOT NULL,
             issued_ms INTEGER NOT NULL
         );"
    }

    fn apply(&self, transaction: &Transaction<'_>, event: &RecordedEvent) -> Result<()> {
        let InvoiceEvent::InvoiceIssued {
            number,
            order_id,
            customer_id,
            product_id,
            quantity,
            unit_price_cents,
            total_cents,
        } = decode::<InvoiceEvent>(event)?;
        transaction.execute(
            "INSERT OR REPLACE INTO invoices VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                order_id.to_string(),
                i64::try_from(number).map_err(|_| ShopError::Internal("invoice number".into()))?,
                customer_id.to_string(),
                product_id.to_string(),
                quantity,
                unit_price_cents,
                total_cents,
                millis(event)
            ],
        )?;
        Ok(())
    }
}
