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
    /// Accepts plain (`12.5`) and exponent (`1.25e1`) notation, held to the same rules: the
    /// scale is read from the digits themselves, never from a parser that rounds
    /// (`Decimal::from_scientific` turns `10.00999…9e0` into `10.01`).
    pub fn parse(&self, text: &str) -> Result<Decimal, AmountError> {
        let number = ExactNumber::of(text.trim()).ok_or(AmountError::NotANumber)?;
        if number.negative || number.digits.is_empty() {
            return Err(AmountError::NotPositive);
        }
        // More integer digits than a Decimal holds is certainly above any `max`.
        if number.integer_digits() > MAX_DECIMAL_DIGITS {
            return Err(AmountError::TooLarge(self.max));
        }
        if number.scale > i64::from(self.max_scale) {
            return Err(AmountError::TooManyDecimals(self.max_scale));
        }
        // Exact from here on: no exponent left, and the scale is within the rules.
        let value = Decimal::from_str_exact(&number.plain())
            .map_err(|_| AmountError::TooLarge(self.max))?;
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

/// Most significant digits a `Decimal` holds (its 96-bit mantissa holds any 28 digits).
pub const MAX_DECIMAL_DIGITS: i64 = 28;

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
    fn exponent_notation_is_held_to_the_same_scale_rule() {
        // Decimal::from_scientific rounds these to 28 digits; the rule is about the text.
        for text in [
            "10.00999999999999999999999999999999e0",
            "1.000999999999999999999999999999999e1",
            "1000999999999999999999999999999999e-32",
            "0.001e0",
            "1e-3",
            "1E-3",
            "12345e-4",
            "1.001e0",
            "0.1001e1",
            "100.1e-2",
            "1e-400",
            "0.00000000000000000000000000000000000001e30",
        ] {
            assert_eq!(
                parse(text),
                Err(AmountError::TooManyDecimals(2)),
                "{text} must be refused, not rounded"
            );
        }
    }

    #[test]
    fn exponent_notation_within_the_scale_is_exact() {
        for (text, expected) in [
            ("1.5e1", "15"),
            ("1.5E+1", "15"),
            ("1.25e0", "1.25"),
            ("125e-2", "1.25"),
            ("12500e-4", "1.25"),
            ("0.0125e2", "1.25"),
            ("1.2500000000000000000000000000000000e0", "1.25"),
            ("100e-2", "1"),
            ("1000000000000000000000000000000000000e-36", "1"),
            ("0.00000000000000000000000000000000001e35", "1"),
            ("1e0", "1"),
            ("1e-2", "0.01"),
            ("9.9999999999999999e14", "999999999999999.99"),
            ("1e15", "1000000000000000"),
            ("  2.5e1 ", "25"),
        ] {
            assert_eq!(
                parse(text).map(|d| d.to_string()),
                Ok(expected.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn exponent_notation_is_held_to_sign_and_maximum() {
        for text in ["0e5", "0.000e-100", "-1e1", "-1.001e0", "0e0"] {
            assert_eq!(parse(text), Err(AmountError::NotPositive), "{text}");
        }
        for text in [
            "1.0000000000000001e15",
            "1e29",
            "123456789012345678901234567890e0",
        ] {
            assert!(
                matches!(parse(text), Err(AmountError::TooLarge(_))),
                "{text}"
            );
        }
        for text in ["1e", "1e+", "e5", "1.e5", ".1e5", "1e5.0", "1ee5", "0x1p3"] {
            assert_eq!(parse(text), Err(AmountError::NotANumber), "{text}");
        }
    }

    /// Writes `mantissa × 10^-scale` with `extra` trailing zeros (same value, larger scale),
    /// `lead` leading zeros, `point` digits after the point and the exponent that makes up
    /// for it: one value, many texts.
    fn scientific(mantissa: u64, scale: u32, extra: usize, lead: usize, point: usize) -> String {
        let digits = format!("{}{mantissa}{}", "0".repeat(lead), "0".repeat(extra));
        let point = point % digits.len();
        let (int, frac) = digits.split_at(digits.len() - point);
        let exponent = i64::try_from(point).unwrap_or(0)
            - i64::try_from(extra).unwrap_or(0)
            - i64::from(scale);
        let frac = if frac.is_empty() {
            String::new()
        } else {
            format!(".{frac}")
        };
        format!("{int}{frac}e{exponent}")
    }

    proptest::proptest! {
        #[test]
        fn any_notation_of_a_value_gets_the_values_verdict(
            mantissa in 0u64..100_000_000_000_000_000,
            scale in 0u32..8,
            extra in 0usize..40,
            lead in 0usize..3,
            point in 0usize..64,
        ) {
            let text = scientific(mantissa, scale, extra, lead, point);
            let exact = Decimal::from_i128_with_scale(i128::from(mantissa), scale).normalize();
            let rules = AmountRules::default();
            let expected = if exact <= Decimal::ZERO {
                Err(AmountError::NotPositive)
            } else if exact.scale() > rules.max_scale {
                Err(AmountError::TooManyDecimals(rules.max_scale))
            } else if exact > rules.max {
                Err(AmountError::TooLarge(rules.max))
            } else {
                Ok(exact)
            };
            proptest::prop_assert_eq!(rules.parse(&text), expected, "{}", text);
        }
    }

    #[test]
    fn sums_stay_exact() {
        let sum = parse("0.1").unwrap() + parse("0.2").unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }
}

/// The exact value a decimal text denotes, `±digits × 10^-scale`, read from the text alone:
/// `-?digits(.digits)?([eE][+-]?digits)?`. `digits` has no leading or trailing zeros (empty
/// for zero), so `scale` is the number of decimals the value really has (negative for a
/// multiple of ten).
struct ExactNumber {
    negative: bool,
    digits: String,
    scale: i64,
}

impl ExactNumber {
    fn of(text: &str) -> Option<Self> {
        let negative = text.starts_with('-');
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, exponent) = match body.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (body, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || mantissa.ends_with('.') {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['-', '+']).unwrap_or(e);
                if unsigned.is_empty() || !digits(unsigned) {
                    return None;
                }
                // Saturating: an exponent beyond i64 is as refused as a merely huge one.
                e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    i64::MIN
                } else {
                    i64::MAX
                })
            }
        };
        let all = format!("{int}{frac}");
        let significant = all.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        let trailing_zeros = len_i64(significant) - len_i64(trimmed);
        let scale = len_i64(frac)
            .saturating_sub(exponent)
            .saturating_sub(trailing_zeros);
        Some(Self {
            negative,
            digits: trimmed.to_string(),
            scale,
        })
    }

    /// Digits before the decimal point.
    fn integer_digits(&self) -> i64 {
        len_i64(&self.digits).saturating_sub(self.scale)
    }

    /// The same value without an exponent (`125`, scale 1 → `12.5`; scale -2 → `12500`).
    /// Only for a scale and a size already checked: it writes out every zero.
    fn plain(&self) -> String {
        let sign = if self.negative { "-" } else { "" };
        let len = self.digits.len();
        match usize::try_from(self.scale) {
            Err(_) => {
                let zeros = usize::try_from(-self.scale).unwrap_or(0);
                format!("{sign}{}{}", self.digits, "0".repeat(zeros))
            }
            Ok(scale) if scale >= len => {
                format!("{sign}0.{}{}", "0".repeat(scale - len), self.digits)
            }
            Ok(scale) => {
                let (int, frac) = self.digits.split_at(len - scale);
                format!("{sign}{int}.{frac}")
            }
        }
    }
}

fn len_i64(s: &str) -> i64 {
    i64::try_from(s.len()).unwrap_or(i64::MAX)
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
