//! Exact conversion between [`rust_decimal::Decimal`] and the Avro `decimal` logical type used for
//! money (`Generation.client_cost`: bytes, precision 38, scale 12).
//!
//! Why a module of its own: money must never be changed silently. Avro stores a decimal as the
//! two's-complement big-endian bytes of the *unscaled* integer (value x 10^12 here), so a value
//! with more than 12 significant fractional digits cannot be represented, and one with more than
//! 38 digits in all exceeds the declared precision. Both are errors, never rounding. Reading back,
//! trailing zeros are dropped (`1.50` comes back as `1.5`): the value is exact, the scale is not
//! part of what Avro carries.

use rust_decimal::Decimal;

/// Digits after the decimal point in the Avro schema (`"scale": 12`).
pub const CLIENT_COST_SCALE: u32 = 12;

/// Total significant digits in the Avro schema (`"precision": 38`).
pub const CLIENT_COST_PRECISION: u32 = 38;

/// Longest two's-complement encoding of an unscaled value within precision 38 (< 2^127).
pub const MAX_DECIMAL_BYTES: usize = 16;

/// Why a decimal could not be converted to or from its Avro form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroDecimalError {
    #[error(
        "{value} has {fractional_digits} significant fractional digits; the Avro decimal keeps \
         {CLIENT_COST_SCALE} and money is never rounded"
    )]
    TooManyFractionalDigits {
        value: Decimal,
        fractional_digits: u32,
    },
    #[error("{value} needs more than the {CLIENT_COST_PRECISION} digits of the Avro decimal at scale {CLIENT_COST_SCALE}")]
    ExceedsPrecision { value: Decimal },
    #[error("an Avro decimal needs at least one byte; got none")]
    Empty,
    #[error("Avro decimal bytes {bytes_hex} exceed precision {CLIENT_COST_PRECISION}")]
    EncodedValueExceedsPrecision { bytes_hex: String },
    #[error("Avro decimal with unscaled value {unscaled} and scale {CLIENT_COST_SCALE} does not fit a rust_decimal::Decimal")]
    DoesNotFitRustDecimal { unscaled: i128 },
}

/// The unscaled integers with at most 38 digits are those below 10^38.
const PRECISION_LIMIT: u128 = 10u128.pow(CLIENT_COST_PRECISION);

/// The Avro bytes of `value` at scale 12: minimal two's-complement big-endian, as Java's
/// `BigInteger.toByteArray` writes them. Returns a stack buffer and the used length (1..=16).
pub fn decimal_to_avro_bytes(
    value: &Decimal,
) -> Result<([u8; MAX_DECIMAL_BYTES], usize), AvroDecimalError> {
    let unscaled = unscaled_at_client_cost_scale(value)?;
    let all_bytes = unscaled.to_be_bytes();
    // Drop leading bytes that only repeat the sign, keeping the sign bit in the first kept byte.
    let mut first_kept = 0;
    while first_kept < MAX_DECIMAL_BYTES - 1 {
        let sign_extension = all_bytes[first_kept];
        let next_is_same_sign = (all_bytes[first_kept + 1] & 0x80 != 0) == (sign_extension == 0xff);
        if (sign_extension == 0x00 || sign_extension == 0xff) && next_is_same_sign {
            first_kept += 1;
        } else {
            break;
        }
    }
    let length = MAX_DECIMAL_BYTES - first_kept;
    let mut minimal = [0u8; MAX_DECIMAL_BYTES];
    minimal[..length].copy_from_slice(&all_bytes[first_kept..]);
    Ok((minimal, length))
}

/// `value` x 10^12 as an integer, or an error if that is not exact or exceeds 38 digits.
pub fn unscaled_at_client_cost_scale(value: &Decimal) -> Result<i128, AvroDecimalError> {
    let mut value_to_scale = *value;
    if value_to_scale.scale() > CLIENT_COST_SCALE {
        // Trailing zeros beyond the 12th digit change nothing; anything else would be rounding.
        value_to_scale = value_to_scale.normalize();
        if value_to_scale.scale() > CLIENT_COST_SCALE {
            return Err(AvroDecimalError::TooManyFractionalDigits {
                value: *value,
                fractional_digits: value_to_scale.scale(),
            });
        }
    }
    let missing_digits = CLIENT_COST_SCALE - value_to_scale.scale();
    let unscaled = value_to_scale
        .mantissa()
        .checked_mul(10i128.pow(missing_digits))
        .filter(|unscaled| unscaled.unsigned_abs() < PRECISION_LIMIT)
        .ok_or(AvroDecimalError::ExceedsPrecision { value: *value })?;
    Ok(unscaled)
}

/// The decimal that the Avro bytes `bytes` (scale 12) encode, with trailing zeros dropped.
/// Accepts non-minimal encodings (extra sign bytes), as the specification allows.
pub fn decimal_from_avro_bytes(bytes: &[u8]) -> Result<Decimal, AvroDecimalError> {
    let unscaled = unscaled_from_avro_bytes(bytes)?;
    decimal_from_unscaled(unscaled)
}

fn unscaled_from_avro_bytes(bytes: &[u8]) -> Result<i128, AvroDecimalError> {
    let (&first, _) = bytes.split_first().ok_or(AvroDecimalError::Empty)?;
    let sign_extension = if first & 0x80 != 0 { 0xff } else { 0x00 };
    let exceeds_precision = || AvroDecimalError::EncodedValueExceedsPrecision {
        bytes_hex: bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
    };
    let significant = if bytes.len() > MAX_DECIMAL_BYTES {
        let (extra, significant) = bytes.split_at(bytes.len() - MAX_DECIMAL_BYTES);
        let significant_sign = if significant[0] & 0x80 != 0 {
            0xff
        } else {
            0x00
        };
        if extra.iter().any(|&byte| byte != sign_extension) || significant_sign != sign_extension {
            return Err(exceeds_precision());
        }
        significant
    } else {
        bytes
    };
    let mut all_bytes = [sign_extension; MAX_DECIMAL_BYTES];
    all_bytes[MAX_DECIMAL_BYTES - significant.len()..].copy_from_slice(significant);
    let unscaled = i128::from_be_bytes(all_bytes);
    if unscaled.unsigned_abs() >= PRECISION_LIMIT {
        return Err(exceeds_precision());
    }
    Ok(unscaled)
}

/// Builds the Decimal with trailing zeros removed first, so that every value the encoder accepts
/// (mantissa < 2^96 at scale <= 12) fits rust_decimal's 96-bit mantissa again.
fn decimal_from_unscaled(unscaled: i128) -> Result<Decimal, AvroDecimalError> {
    let mut mantissa = unscaled;
    let mut scale = CLIENT_COST_SCALE;
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale)
        .map_err(|_| AvroDecimalError::DoesNotFitRustDecimal { unscaled })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn avro_bytes(text: &str) -> Vec<u8> {
        let (bytes, length) = decimal_to_avro_bytes(&Decimal::from_str(text).unwrap()).unwrap();
        bytes[..length].to_vec()
    }

    #[test]
    fn encodes_minimal_twos_complement_of_the_value_times_ten_to_the_twelfth() {
        assert_eq!(avro_bytes("0"), [0x00]);
        // 1e-12 -> unscaled 1
        assert_eq!(avro_bytes("0.000000000001"), [0x01]);
        assert_eq!(avro_bytes("-0.000000000001"), [0xff]);
        // 128e-12 needs a leading zero so that it stays positive
        assert_eq!(avro_bytes("0.000000000128"), [0x00, 0x80]);
        assert_eq!(avro_bytes("-0.000000000128"), [0x80]);
        assert_eq!(avro_bytes("-0.000000000129"), [0xff, 0x7f]);
        // 1 USD -> 10^12 = 0xE8D4A51000
        assert_eq!(avro_bytes("1"), [0x00, 0xe8, 0xd4, 0xa5, 0x10, 0x00]);
    }

    #[test]
    fn round_trips_exactly_and_drops_trailing_zeros() {
        for text in [
            "0",
            "0.0042",
            "-17.5",
            "1.50",
            "0.000000000001",
            "9999999999999999.999999999999",
            "-9999999999999999.999999999999",
            "12345678901234567890123456",
            "79228162514264.337593543950",
        ] {
            let value = Decimal::from_str(text).unwrap();
            let (bytes, length) = decimal_to_avro_bytes(&value).unwrap();
            let decoded = decimal_from_avro_bytes(&bytes[..length]).unwrap();
            assert_eq!(decoded, value, "{text}");
            assert_eq!(decoded.to_string(), value.normalize().to_string(), "{text}");
        }
    }

    #[test]
    fn refuses_to_round_more_than_twelve_fractional_digits() {
        let error = decimal_to_avro_bytes(&Decimal::from_str("0.0000000000001").unwrap());
        assert!(matches!(
            error,
            Err(AvroDecimalError::TooManyFractionalDigits {
                fractional_digits: 13,
                ..
            })
        ));
        // zeros past the 12th digit are not rounding
        let trailing_zeros = Decimal::from_str("0.1230000000000000").unwrap();
        assert_eq!(trailing_zeros.scale(), 16);
        let (bytes, length) = decimal_to_avro_bytes(&trailing_zeros).unwrap();
        assert_eq!(
            decimal_from_avro_bytes(&bytes[..length]).unwrap(),
            trailing_zeros
        );
    }

    #[test]
    fn refuses_values_beyond_precision_38() {
        for text in [
            "100000000000000000000000000",
            "-100000000000000000000000000",
            "79228162514264337593543950335",
        ] {
            let error = decimal_to_avro_bytes(&Decimal::from_str(text).unwrap());
            assert!(
                matches!(error, Err(AvroDecimalError::ExceedsPrecision { .. })),
                "{text}: {error:?}"
            );
        }
    }

    #[test]
    fn reads_non_minimal_and_rejects_malformed_bytes() {
        assert_eq!(decimal_from_avro_bytes(&[0x00; 20]).unwrap(), Decimal::ZERO);
        assert_eq!(
            decimal_from_avro_bytes(&[0xff, 0xff, 0xff, 0xff]).unwrap(),
            Decimal::from_str("-0.000000000001").unwrap()
        );
        assert_eq!(decimal_from_avro_bytes(&[]), Err(AvroDecimalError::Empty));
        // 10^38 itself is one digit too many
        let too_big = 10i128.pow(38).to_be_bytes();
        assert!(matches!(
            decimal_from_avro_bytes(&too_big),
            Err(AvroDecimalError::EncodedValueExceedsPrecision { .. })
        ));
        // within precision 38 but beyond rust_decimal's 96-bit mantissa, even without trailing zeros
        let huge = 10i128.pow(37) + 1;
        assert_eq!(
            decimal_from_avro_bytes(&huge.to_be_bytes()),
            Err(AvroDecimalError::DoesNotFitRustDecimal { unscaled: huge })
        );
        let mut seventeen_bytes = vec![0x01];
        seventeen_bytes.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            decimal_from_avro_bytes(&seventeen_bytes),
            Err(AvroDecimalError::EncodedValueExceedsPrecision { .. })
        ));
    }
}
