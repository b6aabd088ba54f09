//! Portable values ([`SqlValue`]) to and from PostgreSQL's binary forms: parameters by the type
//! the server inferred, columns by their type, `numeric` in both directions.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use flexcore_app::projection::SqlValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A [`SqlValue`] bound to a `$n` parameter, converted to the type PostgreSQL inferred for it:
///
/// | value     | parameter types                                                         |
/// |-----------|-------------------------------------------------------------------------|
/// | `Null`    | any                                                                     |
/// | `Integer` | `int2`, `int4`, `int8` (range-checked), `float4`, `float8`, `numeric`, `bool` (0 is false), `oid` |
/// | `Real`    | `float4`, `float8`, `numeric` (finite values)                           |
/// | `Text`    | `text`, `varchar`, `bpchar`, `name`, `unknown`, enums, `json`, `jsonb`, `uuid`, `timestamptz` (RFC 3339) |
///
/// A domain binds as its base type. Anything else is an error naming the value and the type.
#[derive(Debug)]
pub struct SqlParam<'a>(pub &'a SqlValue);

impl ToSql for SqlParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        bind(self.0, ty, out)
    }

    fn accepts(_: &Type) -> bool {
        // Every type is accepted here and checked in `to_sql`, which can say what went wrong.
        true
    }

    to_sql_checked!();
}

fn bind(value: &SqlValue, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if let Kind::Domain(base) = ty.kind() {
        return bind(value, base, out);
    }
    match value {
        SqlValue::Null => Ok(IsNull::Yes),
        SqlValue::Integer(i) => match *ty {
            Type::INT8 => i.to_sql(ty, out),
            Type::INT4 => i32::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            Type::OID => u32::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)] // as SQLite stores an integer in a REAL column
            Type::FLOAT8 => (*i as f64).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            Type::FLOAT4 => (*i as f32).to_sql(ty, out),
            Type::NUMERIC => encode_numeric(&i.to_string(), out),
            Type::BOOL => (*i != 0).to_sql(ty, out),
            _ => Err(cannot_bind("an integer", ty)),
        },
        SqlValue::Real(r) => match *ty {
            Type::FLOAT8 => r.to_sql(ty, out),
            #[allow(clippy::cast_possible_truncation)]
            Type::FLOAT4 => (*r as f32).to_sql(ty, out),
            Type::NUMERIC if r.is_finite() => encode_numeric(&r.to_string(), out),
            _ => Err(cannot_bind("a real", ty)),
        },
        SqlValue::Text(text) => match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::JSON => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::JSONB => {
                out.put_u8(1); // the jsonb binary format's version
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::UUID => uuid::Uuid::parse_str(text)
                .map_err(|e| format!("cannot bind '{text}' to a uuid parameter: {e}"))?
                .to_sql(ty, out),
            Type::TIMESTAMPTZ => OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|e| format!("cannot bind '{text}' to a timestamptz parameter: {e}"))?
                .to_sql(ty, out),
            _ if matches!(ty.kind(), Kind::Enum(_)) => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            _ => Err(cannot_bind("text", ty)),
        },
    }
}

fn out_of_range(value: i64, ty: &Type) -> BoxError {
    format!("the integer {value} does not fit a parameter of type {ty}").into()
}

fn cannot_bind(what: &str, ty: &Type) -> BoxError {
    format!(
        "cannot bind {what} to a parameter of type {ty} (bind integers to integer, floating or \
         numeric parameters, reals to floating or numeric ones, text to text, json or uuid ones; \
         or cast the parameter in the SQL)"
    )
    .into()
}

/// A column value read back as a [`SqlValue`], by the column's type: integers (`int2`, `int4`,
/// `int8`, `oid`) and `bool` (0 or 1) as `Integer`; `float4`, `float8` as `Real`; `numeric` as
/// `Integer` when it has no fractional digits and fits 64 bits (e.g. `SUM` of integers), else
/// `Real`; `text`, `varchar`, `bpchar`, `name`, enums, `json`, `jsonb`, `uuid` and
/// `timestamptz` (RFC 3339) as `Text`; `NULL` as `Null`. A domain reads as its base type; any
/// other type is an error naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCell(pub SqlValue);

impl<'a> FromSql<'a> for SqlCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        read(ty, raw).map(SqlCell)
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(SqlCell(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn read(ty: &Type, raw: &[u8]) -> Result<SqlValue, BoxError> {
    Ok(match *ty {
        Type::INT2 => SqlValue::Integer(i16::from_sql(ty, raw)?.into()),
        Type::INT4 => SqlValue::Integer(i32::from_sql(ty, raw)?.into()),
        Type::INT8 => SqlValue::Integer(i64::from_sql(ty, raw)?),
        Type::OID => SqlValue::Integer(u32::from_sql(ty, raw)?.into()),
        Type::BOOL => SqlValue::Integer(bool::from_sql(ty, raw)?.into()),
        Type::FLOAT4 => SqlValue::Real(f32::from_sql(ty, raw)?.into()),
        Type::FLOAT8 => SqlValue::Real(f64::from_sql(ty, raw)?),
        Type::NUMERIC => decode_numeric(raw)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            SqlValue::Text(std::str::from_utf8(raw)?.to_owned())
        }
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => SqlValue::Text(std::str::from_utf8(json)?.to_owned()),
            _ => return Err("unsupported jsonb binary format version".into()),
        },
        Type::UUID => SqlValue::Text(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::TIMESTAMPTZ => SqlValue::Text(OffsetDateTime::from_sql(ty, raw)?.format(&Rfc3339)?),
        _ => match ty.kind() {
            Kind::Domain(base) => return read(base, raw),
            Kind::Enum(_) => SqlValue::Text(std::str::from_utf8(raw)?.to_owned()),
            _ => {
                return Err(format!(
                    "a read-model column of type {ty} has no portable value; cast it in the \
                     query (e.g. ::text, ::bigint, ::float8)"
                )
                .into());
            }
        },
    })
}

const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Reads `numeric`'s binary form: a count of base-10000 digits, the weight (power of 10000) of
/// the first, a sign, the display scale, then the digits, most significant first.
fn decode_numeric(raw: &[u8]) -> Result<SqlValue, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric value".into())
    };
    let count = usize::from(word(0)?);
    let weight = i32::from(i16::from_be_bytes(word(1)?.to_be_bytes()));
    let sign = word(2)?;
    let scale = usize::from(word(3)?);
    let digits = (0..count)
        .map(|i| word(4 + i))
        .collect::<Result<Vec<u16>, _>>()?;
    let negative = match sign {
        NUMERIC_POSITIVE => false,
        NUMERIC_NEGATIVE => true,
        NUMERIC_NAN => return Ok(SqlValue::Real(f64::NAN)),
        NUMERIC_PINF => return Ok(SqlValue::Real(f64::INFINITY)),
        NUMERIC_NINF => return Ok(SqlValue::Real(f64::NEG_INFINITY)),
        other => return Err(format!("unknown numeric sign {other:#x}").into()),
    };
    // The digit (base 10000) whose weight is `power`, 0 where none is stored.
    let digit = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if negative {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit(power)));
        }
    }
    if scale == 0 {
        if let Ok(integer) = text.parse::<i64>() {
            return Ok(SqlValue::Integer(integer));
        }
    } else {
        text.push('.');
        let mut fraction = String::new();
        let mut power = -1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(power)));
            power -= 1;
        }
        fraction.truncate(scale);
        text.push_str(&fraction);
    }
    Ok(SqlValue::Real(text.parse::<f64>()?))
}

/// Writes a plain decimal (`-123.45`, no exponent) in `numeric`'s binary form.
fn encode_numeric(decimal: &str, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let (negative, unsigned) = match decimal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, decimal),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if !integer
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(format!("'{decimal}' is not a plain decimal number").into());
    }
    let integer = integer.trim_start_matches('0');
    let scale = u16::try_from(fraction.len()).map_err(|_| "too many fractional digits")?;
    let group = |chunk: &[u8]| -> u16 {
        chunk
            .iter()
            .fold(0, |acc, b| acc * 10 + u16::from(b - b'0'))
    };
    let lead = (4 - integer.len() % 4) % 4;
    let padded_integer = format!("{}{integer}", "0".repeat(lead));
    let tail = (4 - fraction.len() % 4) % 4;
    let padded_fraction = format!("{fraction}{}", "0".repeat(tail));
    let mut digits: Vec<u16> = padded_integer
        .as_bytes()
        .chunks(4)
        .chain(padded_fraction.as_bytes().chunks(4))
        .map(group)
        .collect();
    let mut weight = i32::try_from(padded_integer.len() / 4).map_err(|_| "numeric too large")? - 1;
    let leading_zeros = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading_zeros);
    weight -= i32::try_from(leading_zeros).map_err(|_| "numeric too large")?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if negative && !digits.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        NUMERIC_POSITIVE
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.put_u16(u16::try_from(digits.len()).map_err(|_| "numeric too large")?);
    out.put_i16(i16::try_from(weight).map_err(|_| "numeric out of range")?);
    out.put_u16(sign);
    out.put_u16(scale);
    for digit in digits {
        out.put_u16(digit);
    }
    Ok(IsNull::No)
}

/// Every row's columns as portable values.
pub(super) fn decode_rows(
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Vec<SqlValue>>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.try_get::<_, SqlCell>(i).map(|cell| cell.0))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(decimal: &str) -> SqlValue {
        let mut out = BytesMut::new();
        encode_numeric(decimal, &mut out).unwrap();
        decode_numeric(&out).unwrap()
    }

    #[test]
    fn numerics_round_trip() {
        assert_eq!(round_trip("0"), SqlValue::Integer(0));
        assert_eq!(round_trip("-0"), SqlValue::Integer(0));
        assert_eq!(round_trip("42"), SqlValue::Integer(42));
        assert_eq!(round_trip("10000"), SqlValue::Integer(10_000));
        assert_eq!(round_trip("-123456789"), SqlValue::Integer(-123_456_789));
        assert_eq!(
            round_trip(&i64::MAX.to_string()),
            SqlValue::Integer(i64::MAX)
        );
        assert_eq!(
            round_trip(&i64::MIN.to_string()),
            SqlValue::Integer(i64::MIN)
        );
        assert_eq!(
            round_trip("99999999999999999999"),
            SqlValue::Real(1e20),
            "too large for 64 bits: a real"
        );
        assert_eq!(round_trip("1.5"), SqlValue::Real(1.5));
        assert_eq!(round_trip("-0.000123"), SqlValue::Real(-0.000_123));
        assert_eq!(round_trip("12345.6789"), SqlValue::Real(12_345.678_9));
        assert_eq!(round_trip("2.50"), SqlValue::Real(2.5));
        assert_eq!(round_trip(&0.1_f64.to_string()), SqlValue::Real(0.1));
        assert_eq!(round_trip(&1e300_f64.to_string()), SqlValue::Real(1e300));
        assert_eq!(
            round_trip(&2.5e-300_f64.to_string()),
            SqlValue::Real(2.5e-300)
        );
        let mut out = BytesMut::new();
        assert!(encode_numeric("1e5", &mut out).is_err());
    }

    #[test]
    fn numerics_decode_the_server_s_layout() {
        // 12345.678 as PostgreSQL sends it: digits [1, 2345, 6780], weight 1, scale 3.
        let raw: Vec<u8> = [3_u16, 1, 0, 3, 1, 2345, 6780]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(decode_numeric(&raw).unwrap(), SqlValue::Real(12_345.678));
        // 20000 with trailing zero digits left out: digits [2], weight 1, scale 0.
        let raw: Vec<u8> = [1_u16, 1, 0, 0, 2]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(decode_numeric(&raw).unwrap(), SqlValue::Integer(20_000));
    }
}
