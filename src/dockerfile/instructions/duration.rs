//! Go's `time.ParseDuration`, for HEALTHCHECK's `--interval`, `--timeout`, `--start-period` and
//! `--start-interval` (`300ms`, `1m30s`, `1.5h`).

use nom::bytes::complete::take_while;
use nom::character::complete::one_of;
use nom::combinator::opt;
use nom::{IResult, Parser};

/// Nanoseconds in a Go duration unit.
fn unit_nanos(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" | "μs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    })
}

fn number(input: &str) -> IResult<&str, (&str, &str)> {
    (
        take_while(|c: char| c.is_ascii_digit()),
        nom::combinator::map(
            opt((
                nom::character::complete::char('.'),
                take_while(|c: char| c.is_ascii_digit()),
            )),
            |o| o.map_or("", |(_, frac)| frac),
        ),
    )
        .parse(input)
}

/// Parses a Go duration into nanoseconds, with Go's error messages.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let quoted = super::super::gostr::go_quote(s);
    let invalid = || format!("time: invalid duration {quoted}");
    let (mut rest, sign) = opt(one_of::<_, _, nom::error::Error<&str>>("+-"))
        .parse(s)
        .map_err(|_| invalid())?;
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let (after, (int, frac)) = number(rest).map_err(|_| invalid())?;
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {quoted}"));
        }
        let nanos = unit_nanos(unit).ok_or_else(|| {
            format!(
                "time: unknown unit {} in duration {quoted}",
                super::super::gostr::go_quote(unit)
            )
        })?;
        let value: f64 = format!("{}.{}0", if int.is_empty() { "0" } else { int }, frac)
            .parse()
            .map_err(|_| invalid())?;
        total += value * nanos;
        if total > i64::MAX as f64 {
            return Err(invalid());
        }
        rest = &after[unit_len..];
    }
    let total = total as i64;
    Ok(if sign == Some('-') { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-2s"), Ok(-2_000_000_000));
        assert_eq!(
            parse_go_duration("5"),
            Err("time: missing unit in duration \"5\"".into())
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".into())
        );
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".into())
        );
        assert!(parse_go_duration("9999999999h").is_err());
    }
}
