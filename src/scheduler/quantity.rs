//! Kubernetes resource quantities (`100m`, `1Gi`, `1.5`, `2e3`, `128974848`) parsed exactly.
//!
//! k8s-openapi keeps a `Quantity` as its string form only, so the scheduler parses it here.
//! A quantity is a signed decimal number times a suffix: a binary SI power of two (`Ki` ..
//! `Ei`), a decimal SI power of ten (`n` .. `E`), or a decimal exponent (`e3`, `E-2`). The
//! conversions round up like upstream's `Quantity.Value()` / `MilliValue()`, so `0.1m` of cpu
//! still counts as one millicore and a fractional byte as a whole one.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity {0:?} has no number")]
    NoNumber(String),
    #[error("quantity {0:?} has an unknown suffix")]
    BadSuffix(String),
    #[error("quantity {0:?} has more significant digits than kedge can represent")]
    TooPrecise(String),
}

/// An exact quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

impl Parsed {
    /// The value in whole units, rounded up (bytes for memory, cores for cpu).
    pub fn value(&self) -> i64 {
        self.scaled(0)
    }

    /// The value in thousandths of a unit, rounded up (millicores for cpu).
    pub fn milli_value(&self) -> i64 {
        self.scaled(3)
    }

    /// `self × 10^k`, rounded away from zero, saturated to the i64 range.
    fn scaled(&self, k: i32) -> i64 {
        let saturate = |negative: bool| if negative { i64::MIN } else { i64::MAX };
        let negative = self.mantissa < 0;
        let mut n = self.mantissa.unsigned_abs();
        if n == 0 {
            return 0;
        }
        for _ in 0..self.exp2 {
            match n.checked_mul(2) {
                Some(v) => n = v,
                None => return saturate(negative),
            }
        }
        let p = self.exp10 + k;
        if p >= 0 {
            for _ in 0..p {
                match n.checked_mul(10) {
                    Some(v) => n = v,
                    None => return saturate(negative),
                }
            }
        } else {
            let mut inexact = false;
            for _ in 0..(-p) {
                if n == 0 {
                    break;
                }
                inexact |= n % 10 != 0;
                n /= 10;
            }
            if inexact {
                n += 1;
            }
        }
        match i64::try_from(n) {
            Ok(v) if negative => -v,
            Ok(v) => v,
            Err(_) => saturate(negative),
        }
    }
}

/// Parses a quantity string such as `500m`, `1.5Gi`, `2e3` or `128974848`.
pub fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first() {
        if c == b'+' || c == b'-' {
            negative = c == b'-';
            i = 1;
        }
    }
    let mut mantissa: i128 = 0;
    let mut digits = 0;
    let mut frac_len: i32 = 0;
    let mut seen_point = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            // Leading zeros carry no precision; only count significant digits.
            if mantissa != 0 || c != b'0' {
                digits += 1;
                if digits > 36 {
                    return Err(QuantityError::TooPrecise(s.to_string()));
                }
            }
            mantissa = mantissa * 10 + i128::from(c - b'0');
            if seen_point {
                frac_len += 1;
            }
        } else if c == b'.' && !seen_point {
            seen_point = true;
        } else {
            break;
        }
        i += 1;
    }
    let number = &s[usize::from(s.starts_with(['+', '-']))..i];
    if !number.bytes().any(|c| c.is_ascii_digit()) {
        return Err(QuantityError::NoNumber(s.to_string()));
    }
    let (exp10, exp2) = suffix(&s[i..]).ok_or_else(|| QuantityError::BadSuffix(s.to_string()))?;
    if negative {
        mantissa = -mantissa;
    }
    Ok(Parsed {
        mantissa,
        exp10: exp10 - frac_len,
        exp2,
    })
}

/// The power of ten and power of two a suffix stands for.
fn suffix(s: &str) -> Option<(i32, u32)> {
    let decimal = |e| Some((e, 0));
    let binary = |e| Some((0, e));
    match s {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let rest = s.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let e: i32 = rest.parse().ok()?;
            // Beyond this every value saturates or rounds to the smallest unit anyway.
            decimal(e.clamp(-100, 100))
        }
    }
}

/// Whole units of a k8s-openapi quantity, 0 when it does not parse (the API server
/// validates quantities, so an unparsable one never reaches the scheduler from a client).
pub fn value(q: &Quantity) -> i64 {
    parse(&q.0).map(|p| p.value()).unwrap_or(0)
}

/// Thousandths of a unit of a k8s-openapi quantity, 0 when it does not parse.
pub fn milli_value(q: &Quantity) -> i64 {
    parse(&q.0).map(|p| p.milli_value()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> i64 {
        parse(s).unwrap().value()
    }
    fn m(s: &str) -> i64 {
        parse(s).unwrap().milli_value()
    }

    #[test]
    fn plain_and_fractional_numbers() {
        assert_eq!(v("128974848"), 128_974_848);
        assert_eq!(m("1.5"), 1500);
        assert_eq!(m("0.5"), 500);
        assert_eq!(m(".5"), 500);
        assert_eq!(m("1."), 1000);
        assert_eq!(m("+2"), 2000);
        assert_eq!(m("-2"), -2000);
        assert_eq!(v("0"), 0);
        assert_eq!(v("007"), 7);
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(m("100m"), 100);
        assert_eq!(m("250m"), 250);
        assert_eq!(v("1k"), 1000);
        assert_eq!(v("129M"), 129_000_000);
        assert_eq!(v("1G"), 1_000_000_000);
        assert_eq!(v("2T"), 2_000_000_000_000);
        assert_eq!(v("1P"), 1_000_000_000_000_000);
        assert_eq!(v("1E"), 1_000_000_000_000_000_000);
        assert_eq!(m("500u"), 1, "a fraction of a milli rounds up");
        assert_eq!(m("1000000n"), 1);
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(v("1Ki"), 1024);
        assert_eq!(v("123Mi"), 123 * 1024 * 1024);
        assert_eq!(v("1Gi"), 1 << 30);
        assert_eq!(v("1.5Gi"), 3 << 29);
        assert_eq!(v("1Ti"), 1 << 40);
        assert_eq!(v("1Pi"), 1 << 50);
        assert_eq!(v("1Ei"), 1 << 60);
        assert_eq!(m("1Ki"), 1_024_000);
    }

    #[test]
    fn exponents() {
        assert_eq!(v("2e3"), 2000);
        assert_eq!(v("2E3"), 2000);
        assert_eq!(v("129e6"), 129_000_000);
        assert_eq!(m("1e-3"), 1);
        assert_eq!(m("15e-1"), 1500);
        assert_eq!(v("1e+2"), 100);
    }

    #[test]
    fn rounds_up_like_upstream_value() {
        assert_eq!(v("100m"), 1);
        assert_eq!(v("1.1"), 2);
        assert_eq!(v("0.5Ki"), 512);
        assert_eq!(m("0.1m"), 1);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(v("16Ei"), i64::MAX);
        assert_eq!(v("1e50"), i64::MAX);
        assert_eq!(m("1e-50"), 1);
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        assert_eq!(parse(""), Err(QuantityError::NoNumber(String::new())));
        assert!(matches!(parse("m"), Err(QuantityError::NoNumber(_))));
        assert!(matches!(parse("."), Err(QuantityError::NoNumber(_))));
        assert!(matches!(parse("1.2.3"), Err(QuantityError::BadSuffix(_))));
        assert!(matches!(parse("1KB"), Err(QuantityError::BadSuffix(_))));
        assert!(matches!(parse("1ki"), Err(QuantityError::BadSuffix(_))));
        assert!(matches!(parse("1e"), Err(QuantityError::BadSuffix(_))));
        assert!(matches!(parse("1 Gi"), Err(QuantityError::BadSuffix(_))));
        assert!(matches!(
            parse("1234567890123456789012345678901234567"),
            Err(QuantityError::TooPrecise(_))
        ));
    }

    #[test]
    fn openapi_quantity_helpers() {
        assert_eq!(milli_value(&Quantity("2".into())), 2000);
        assert_eq!(value(&Quantity("64Mi".into())), 64 << 20);
        assert_eq!(value(&Quantity("bogus".into())), 0);
    }
}
