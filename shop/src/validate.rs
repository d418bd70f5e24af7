//! Input rules shared by the commands. Each returns the cleaned value or an
//! `Invalid` error that says what to send instead.

use crate::error::{Result, ShopError};

/// Longest name, supplier or similar text.
pub const MAX_TEXT: usize = 200;
/// Largest amount of money in cents (ten billion units of currency).
pub const MAX_CENTS: i64 = 1_000_000_000_000;
/// Most units in one order.
pub const MAX_QUANTITY: u32 = 1_000_000;

/// A trimmed, non-empty text of at most [`MAX_TEXT`] characters.
pub fn text(what: &str, value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ShopError::Invalid(format!("{what} must not be empty")));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(ShopError::Invalid(format!(
            "{what} is longer than {MAX_TEXT} characters"
        )));
    }
    Ok(value.to_owned())
}

/// An amount of cents between 0 and [`MAX_CENTS`].
pub fn cents(what: &str, value: i64) -> Result<i64> {
    if !(0..=MAX_CENTS).contains(&value) {
        return Err(ShopError::Invalid(format!(
            "{what} must be between 0 and {MAX_CENTS} cents, got {value}"
        )));
    }
    Ok(value)
}

/// A quantity between 1 and [`MAX_QUANTITY`].
pub fn quantity(value: u32) -> Result<u32> {
    if !(1..=MAX_QUANTITY).contains(&value) {
        return Err(ShopError::Invalid(format!(
            "quantity must be between 1 and {MAX_QUANTITY}, got {value}"
        )));
    }
    Ok(value)
}

/// A plausible email address, trimmed and lower-cased (addresses are unique
/// regardless of case).
pub fn email(value: &str) -> Result<String> {
    let value = value.trim().to_lowercase();
    let valid = value.len() <= 254
        && !value.contains(char::is_whitespace)
        && matches!(value.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@')
                && !domain.starts_with('.') && !domain.ends_with('.'));
    if !valid {
        return Err(ShopError::Invalid(format!(
            "'{value}' is not an email address like name@example.com"
        )));
    }
    Ok(value)
}

/// A password of 8 to 1024 characters.
pub fn password(value: &str) -> Result<&str> {
    let length = value.chars().count();
    if !(8..=1024).contains(&length) {
        return Err(ShopError::Invalid(
            "password must have 8 to 1024 characters".into(),
        ));
    }
    Ok(value)
}

/// Parses a decimal amount such as `12`, `12.5` or `12.50` into cents.
pub fn parse_price(value: &str) -> Result<i64> {
    let invalid = || ShopError::Invalid(format!("'{value}' is not an amount like 12.50"));
    let (units, fraction) = value.trim().split_once('.').unwrap_or((value.trim(), ""));
    if units.is_empty()
        || !units.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let units: i64 = units.parse().map_err(|_| invalid())?;
    let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    cents(
        "amount",
        units
            .checked_mul(100)
            .and_then(|c| c.checked_add(fraction))
            .ok_or_else(invalid)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_trimmed_and_bounded() {
        assert_eq!(text("name", "  tea ").expect("ok"), "tea");
        assert!(text("name", "   ").is_err());
        assert!(text("name", &"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn amounts_and_quantities_are_bounded() {
        assert!(cents("price", -1).is_err());
        assert!(cents("price", MAX_CENTS + 1).is_err());
        assert_eq!(cents("price", 0).expect("ok"), 0);
        assert!(quantity(0).is_err());
        assert!(quantity(MAX_QUANTITY + 1).is_err());
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email(" Ann@Example.COM ").expect("ok"), "ann@example.com");
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@example",
            "ann@.com",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prices_parse_to_cents() {
        assert_eq!(parse_price("12").expect("ok"), 1200);
        assert_eq!(parse_price("12.5").expect("ok"), 1250);
        assert_eq!(parse_price("0.07").expect("ok"), 7);
        for bad in [
            "",
            "-1",
            "1.234",
            "1,50",
            "abc",
            ".5",
            "99999999999999999999",
        ] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }
}
