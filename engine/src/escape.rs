//! User text in logs: stream names, group and consumer names and messages come
//! from clients, and the human log format writes field values raw. [`Escaped`]
//! writes them with control characters escaped, so a name holding `\n` or an
//! ANSI escape cannot forge a log line or repaint a terminal.

use std::fmt;

/// Displays `self.0` with every control character escaped (`\n`, `\u{1b}`, ...).
/// Use it for any client-supplied text in a log field: `stream = %Escaped(&name)`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for character in self.0.chars() {
            if character.is_control() {
                write!(formatter, "{}", character.escape_default())?;
            } else {
                write!(formatter, "{character}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "order-1\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'));
        assert_eq!(
            shown,
            "order-1\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m"
        );
        assert_eq!(Escaped("café-7").to_string(), "café-7");
    }
}
