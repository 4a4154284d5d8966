//! Durations as the configuration writes them.

use std::time::Duration;

use super::ConfigError;

/// `250ms`, `10s`, `2m`, `1h`, `1.5s`: a number and a unit, nothing else.
pub fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            key,
            format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h"),
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(1e-3..=7.0 * 86_400.0).contains(&secs) {
        return Err(ConfigError::invalid(
            key,
            format!("{text:?} is out of range [1ms, 7 days]"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            duration("k", "250ms").expect("test value"),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration("k", "1.5s").expect("test value"),
            Duration::from_millis(1500)
        );
        assert_eq!(
            duration("k", "2m").expect("test value"),
            Duration::from_secs(120)
        );
        for bad in ["10", "s", "-1s", "0s", "1d", "1e3s"] {
            assert!(duration("k", bad).is_err(), "{bad}");
        }
    }
}
