//! Sizes as people write and read them: `64K`, `1 MiB`, `1T` in, `64 KiB` out. One parser for
//! every size flag (`shmring create --capacity`, `shmringd --max-channel-bytes`, …) and one
//! printer for every message and table, so that what a message prints can be typed back.

const UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Parses a size: a whole number of bytes, optionally followed by a unit `K`, `M`, `G` or `T`
/// (powers of 1024; `KB`, `KiB`, any case, a space before it, are the same). The error says
/// what a size looks like.
///
/// ```
/// use shmring::units::parse_size;
/// assert_eq!(parse_size("64K"), Ok(64 << 10));
/// assert_eq!(parse_size("1 TiB"), Ok(1 << 40));
/// assert!(parse_size("1.5G").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let what = "a size is a whole number of bytes, optionally followed by K, M, G or T \
                (powers of 1024), as in 4096, 64K or 1G";
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: {what}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown size unit {other:?}: {what}")),
    };
    n.checked_mul(mult).ok_or_else(|| {
        format!(
            "{s:?} is too large (the largest size is {} bytes)",
            u64::MAX
        )
    })
}

/// A size for a table, in the largest unit it reaches: exact when that unit divides it
/// (`64 KiB`, `3 MiB`), else to one decimal (`1.5 KiB`).
pub fn format_size(n: u64) -> String {
    if let Some((name, unit)) = exact_unit(n) {
        return format!("{} {name}", n / unit);
    }
    let (name, unit) = UNITS
        .iter()
        .rev()
        .find(|(_, u)| n >= *u)
        .copied()
        .unwrap_or(UNITS[0]);
    format!("{:.1} {name}", n as f64 / unit as f64)
}

/// A size for a message, where the exact number matters: `1 GiB` when a unit divides it,
/// else `1073745920 bytes (1.0 GiB)`.
pub fn format_size_exact(n: u64) -> String {
    match exact_unit(n) {
        Some(_) => format_size(n),
        None => format!("{n} bytes ({})", format_size(n)),
    }
}

/// The largest unit `n` reaches, if it divides `n` exactly (bytes below 1 KiB, and zero).
fn exact_unit(n: u64) -> Option<(&'static str, u64)> {
    let unit = UNITS
        .iter()
        .rev()
        .find(|(_, u)| n >= *u)
        .copied()
        .unwrap_or(UNITS[0]);
    n.is_multiple_of(unit.1).then_some(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_up_to_terabytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1tb"), Ok(1 << 40));
        for bad in ["12q", "", "K", "1.5G", "-1"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("K, M, G or T"), "{bad:?}: {e}");
        }
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn sizes_print_with_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(3 << 20), "3 MiB");
        assert_eq!(format_size(1 << 40), "1 TiB");
        assert_eq!(format_size(1025 << 30), "1.0 TiB");
        assert_eq!(format_size(1_073_745_920), "1.0 GiB");
        assert_eq!(format_size_exact(1 << 30), "1 GiB");
        assert_eq!(
            format_size_exact((1 << 30) + 4096),
            "1073745920 bytes (1.0 GiB)"
        );
        // What a message prints parses back.
        for n in [1u64 << 10, 96 << 20, 1 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }
}
