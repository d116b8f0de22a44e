//! Kubernetes resource quantities ("500m", "4", "16Gi", "1.5T") parsed into the units the core counts in.

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity.
    #[error(
        "failed to parse quantity {0:?}: write a number with an optional suffix (m, k, M, G, T, Ki, Mi, Gi, Ti), e.g. \"500m\", \"4\" or \"16Gi\""
    )]
    Malformed(String),
    /// Below zero.
    #[error("failed to parse quantity {0:?}: it must not be negative")]
    Negative(String),
    /// Too large for the core's counters.
    #[error("failed to parse quantity {0:?}: it is too large")]
    TooLarge(String),
}

const SUFFIXES: [(&str, f64); 13] = [
    ("Ki", 1024.0),
    ("Mi", 1024.0 * 1024.0),
    ("Gi", 1024.0 * 1024.0 * 1024.0),
    ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

/// The quantity's value as a plain number (e.g. "500m" → 0.5, "1Ki" → 1024).
pub fn parse(s: &str) -> Result<f64, QuantityError> {
    let t = s.trim();
    let (num, mult) =
        SUFFIXES.iter().find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m))).unwrap_or((t, 1.0));
    let v: f64 = num.parse().map_err(|_| QuantityError::Malformed(s.into()))?;
    if !v.is_finite() || num.is_empty() {
        return Err(QuantityError::Malformed(s.into()));
    }
    if v < 0.0 {
        return Err(QuantityError::Negative(s.into()));
    }
    let out = v * mult;
    if out > 1e19 {
        return Err(QuantityError::TooLarge(s.into()));
    }
    Ok(out)
}

/// CPU in milli-cores ("500m" → 500, "2" → 2000).
pub fn milli(s: &str) -> Result<u64, QuantityError> {
    Ok((parse(s)? * 1000.0).round() as u64)
}

/// Memory in MiB, rounded up ("16Gi" → 16384, "1G" → 954).
pub fn mib(s: &str) -> Result<u64, QuantityError> {
    Ok((parse(s)? / (1024.0 * 1024.0)).ceil() as u64)
}

/// A duration such as "90s", "45m", "2h" or "1h30m" in seconds.
pub fn seconds(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() || total == 0 && s.trim().is_empty() {
        return None;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_convert_to_the_cores_units() {
        assert_eq!(milli("500m"), Ok(500));
        assert_eq!(milli("2"), Ok(2000));
        assert_eq!(milli("1.5"), Ok(1500));
        assert_eq!(mib("16Gi"), Ok(16384));
        assert_eq!(mib("1G"), Ok(954));
        assert_eq!(mib("512Mi"), Ok(512));
        assert_eq!(mib("1Pi"), Ok(1024 * 1024 * 1024));
    }

    #[test]
    fn bad_quantities_are_refused_with_the_reason() {
        assert!(matches!(milli("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(milli("lots"), Err(QuantityError::Malformed(_))));
        assert!(matches!(milli("Gi"), Err(QuantityError::Malformed(_))));
        assert!(milli("4x").unwrap_err().to_string().contains("\"16Gi\""));
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(seconds("90s"), Some(90));
        assert_eq!(seconds("1h30m"), Some(5400));
        assert_eq!(seconds("2d"), Some(172_800));
        assert_eq!(seconds("10"), None);
        assert_eq!(seconds("5w"), None);
        assert_eq!(seconds("99999999999999999999d"), None, "overflow is refused, not wrapped");
        assert_eq!(seconds(""), None);
    }
}
