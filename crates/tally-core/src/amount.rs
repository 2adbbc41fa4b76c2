//! Exact money parsing. Amounts arrive as JSON numbers or strings and become
//! `rust_decimal::Decimal` without ever passing through a float; more decimals than allowed
//! is an error, never a silent rounding.

use rust_decimal::Decimal;

/// The limits an amount must respect (from `ledger.*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountRules {
    /// Most decimal places accepted (after dropping trailing zeros).
    pub max_scale: u32,
    /// Largest amount accepted, inclusive.
    pub max: Decimal,
}

impl Default for AmountRules {
    fn default() -> Self {
        Self {
            max_scale: 2,
            max: Decimal::from(1_000_000_000_000_000u64),
        }
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number")]
    NotANumber,
    #[error("must be greater than 0")]
    NotPositive,
    #[error("must have at most {0} decimal places")]
    TooManyDecimals(u32),
    #[error("must be at most {0}")]
    TooLarge(Decimal),
}

impl AmountRules {
    /// Parses the exact text of a JSON number (or of a JSON string) into an amount.
    /// Accepts plain (`12.5`) and exponent (`1.25e1`) notation.
    pub fn parse(&self, text: &str) -> Result<Decimal, AmountError> {
        let text = text.trim();
        let Some(shape) = NumberShape::of(text) else {
            return Err(AmountError::NotANumber);
        };
        let parsed = if shape.has_exponent {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        };
        // A well-formed number that Decimal cannot hold is either huge (certainly above `max`)
        // or has more decimals than Decimal keeps (certainly more than `max_scale`).
        let value = parsed.map_err(|_| {
            if shape.looks_huge() {
                AmountError::TooLarge(self.max)
            } else {
                AmountError::TooManyDecimals(self.max_scale)
            }
        })?;
        self.check(value)
    }

    /// Checks a decimal against the rules and returns it normalized (`10.50` → `10.5`).
    pub fn check(&self, value: Decimal) -> Result<Decimal, AmountError> {
        let value = value.normalize();
        if value <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        if value > self.max {
            return Err(AmountError::TooLarge(self.max));
        }
        if value.scale() > self.max_scale {
            return Err(AmountError::TooManyDecimals(self.max_scale));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Decimal, AmountError> {
        AmountRules::default().parse(s)
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(parse("100").unwrap().to_string(), "100");
        assert_eq!(parse("0.01").unwrap().to_string(), "0.01");
        assert_eq!(parse("10.50").unwrap().to_string(), "10.5");
        assert_eq!(parse("1.5e1").unwrap().to_string(), "15");
        assert_eq!(parse("1e15").unwrap().to_string(), "1000000000000000");
        assert_eq!(
            parse("999999999999999.99").unwrap().to_string(),
            "999999999999999.99"
        );
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        assert_eq!(parse("0"), Err(AmountError::NotPositive));
        assert_eq!(parse("-1"), Err(AmountError::NotPositive));
        assert_eq!(parse("abc"), Err(AmountError::NotANumber));
        assert_eq!(parse(""), Err(AmountError::NotANumber));
        assert_eq!(parse("NaN"), Err(AmountError::NotANumber));
        assert_eq!(parse("1."), Err(AmountError::NotANumber));
        assert_eq!(parse(".5"), Err(AmountError::NotANumber));
        assert_eq!(parse("1e"), Err(AmountError::NotANumber));
        assert_eq!(
            parse("0.00000000000000000000000000000000001"),
            Err(AmountError::TooManyDecimals(2))
        );
        assert!(matches!(parse("1e16"), Err(AmountError::TooLarge(_))));
        assert!(matches!(parse("1e400"), Err(AmountError::TooLarge(_))));
        assert!(matches!(
            parse("99999999999999999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        assert_eq!(parse("0.001"), Err(AmountError::TooManyDecimals(2)));
    }

    #[test]
    fn sums_stay_exact() {
        let sum = parse("0.1").unwrap() + parse("0.2").unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }
}

/// The syntax of a JSON-like decimal number: `-?digits(.digits)?([eE][+-]?digits)?`.
struct NumberShape {
    int_digits: usize,
    exponent: i64,
    has_exponent: bool,
}

impl NumberShape {
    fn of(text: &str) -> Option<Self> {
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, exponent) = match body.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (body, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || (mantissa.ends_with('.')) {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['-', '+']).unwrap_or(e);
                if unsigned.is_empty() || !digits(unsigned) {
                    return None;
                }
                e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    i64::MIN
                } else {
                    i64::MAX
                })
            }
        };
        Some(Self {
            int_digits: int.trim_start_matches('0').len(),
            exponent,
            has_exponent: text.contains(['e', 'E']),
        })
    }

    fn looks_huge(&self) -> bool {
        self.exponent > 0 || self.int_digits > 15
    }
}

/// Serde helper: a money value as a JSON number with its exact, shortest decimal text
/// (`100.5`, never `100.50` or `100.49999`). Use with `#[serde(with = "money_json")]`.
pub mod money_json {
    use rust_decimal::Decimal;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::arbitrary_precision::serialize(&value.normalize(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        rust_decimal::serde::arbitrary_precision::deserialize(d)
    }
}
