//! The memory budget: before a backend allocates a program's buffers it
//! adds up the bytes they need and stops with a diagnostic (which tensor
//! is the largest, what to change) when they exceed the limit, instead of
//! letting an allocation fail and abort the process.
//!
//! The limit is the machine's available memory (`MemAvailable` in
//! `/proc/meminfo`, read once, when first needed) unless the process sets one
//! ([`set_limit`], the CLI's `--max-memory`). Where the available memory
//! cannot be read, only the explicit limit applies.

use super::Error;
use crate::diag::Span;
use std::sync::atomic::{AtomicU64, Ordering};

/// 0: no explicit limit.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the budget for every later run in this process (`None`: the
/// available memory).
pub fn set_limit(bytes: Option<u64>) {
    LIMIT.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// The budget in bytes, and where it comes from.
pub fn limit() -> (u64, &'static str) {
    match LIMIT.load(Ordering::Relaxed) {
        0 => match available() {
            Some(b) => (b, "the memory available on this machine"),
            None => (u64::MAX, "no limit"),
        },
        b => (b, "--max-memory"),
    }
}

/// Read once per process: a budget is checked on every compile and every
/// interpreted run (loop bodies included), and the file read costs more
/// than the check.
fn available() -> Option<u64> {
    static AVAILABLE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(read_available)
}

fn read_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Adds up what a program needs, remembering its largest tensor.
#[derive(Default)]
pub struct Budget {
    bytes: u64,
    largest: Option<(u64, String, Span)>,
}

impl Budget {
    /// Counts a buffer of `elements` f32s holding `what` (a shape, a
    /// name), made at `span`.
    pub fn add(&mut self, elements: usize, what: impl FnOnce() -> String, span: Span) {
        let b = (elements as u64).saturating_mul(4);
        self.bytes = self.bytes.saturating_add(b);
        if self.largest.as_ref().is_none_or(|l| b > l.0) {
            self.largest = Some((b, what(), span));
        }
    }

    /// Whether the total fits the limit.
    pub fn check(&self) -> Result<(), Error> {
        let (limit, source) = limit();
        if self.bytes <= limit {
            return Ok(());
        }
        let (_, largest, span) = self.largest.clone().unwrap_or_default();
        Err(Error::OutOfMemory {
            needed: self.bytes,
            limit,
            limit_from: source,
            largest,
            span,
        })
    }
}

/// A byte count as people read it: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Reads a size written as `512M`, `8G`, `1.5GiB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512M, 8G)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024f64.powi(4),
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    let bytes = v * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("3X").is_err());
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
