//! Value types used in the config file: durations, byte sizes, disk budgets, secrets.
//! Each parses from the human form a technician writes and prints back the same way.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::time::Duration;

/// A duration written as `"30s"`, `"1m 30s"`, `"250ms"`, `"31days"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?}: {e} (e.g. \"30s\", \"250ms\", \"2m\")"
            ))
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A byte count written as `"512MiB"`, `"200GB"`, `"1.5TiB"` or a bare integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number and a unit like \"200GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    Ok((n * mult as f64) as u64)
}

pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (u, m) in UNITS {
        if b >= m && b.is_multiple_of((m / 1024).max(1)) {
            let v = b as f64 / m as f64;
            return if v.fract() == 0.0 {
                format!("{v}{u}")
            } else {
                format!("{v:.2}{u}")
            };
        }
    }
    format!("{b}B")
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d)? {
            StrOrInt::Int(i) if i >= 0 => Ok(Bytes(i as u64)),
            StrOrInt::Int(i) => Err(de::Error::custom(format!(
                "size must not be negative, got {i}"
            ))),
            StrOrInt::Str(s) => parse_bytes(&s).map(Bytes).map_err(de::Error::custom),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_bytes(self.0))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    Int(i64),
    Str(String),
}

/// The ring buffer's disk budget: absolute, or a share of the data filesystem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Percent(f64),
}

impl Budget {
    /// Resolves against the filesystem size holding the data directory.
    pub fn resolve(&self, fs_total: u64) -> u64 {
        match *self {
            Budget::Bytes(b) => b,
            Budget::Percent(p) => (fs_total as f64 * p / 100.0) as u64,
        }
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d)? {
            StrOrInt::Int(i) if i > 0 => Ok(Budget::Bytes(i as u64)),
            StrOrInt::Int(i) => Err(de::Error::custom(format!(
                "budget must be positive, got {i}"
            ))),
            StrOrInt::Str(s) => {
                if let Some(p) = s.trim().strip_suffix('%') {
                    let v: f64 = p
                        .trim()
                        .parse()
                        .map_err(|_| de::Error::custom(format!("invalid percentage {s:?}")))?;
                    if !(v > 0.0 && v <= 100.0) {
                        return Err(de::Error::custom(format!(
                            "percentage must be in (0, 100], got {s:?}"
                        )));
                    }
                    Ok(Budget::Percent(v))
                } else {
                    parse_bytes(&s)
                        .map(Budget::Bytes)
                        .map_err(de::Error::custom)
                }
            }
        }
    }
}

impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Bytes(b) => s.serialize_str(&format_bytes(*b)),
            Budget::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

/// A secret (camera password, broker password). Never printed: Debug, Display and
/// Serialize all mask it, so it cannot leak through logs or `config show`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

pub const MASK: &str = "********";

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The only way to read the secret: call sites are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        assert_eq!(parse_bytes("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse_bytes("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_bytes("42").unwrap(), 42);
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert_eq!(format_bytes(200 << 30), "200GiB");
        assert_eq!(format_bytes(1000), "1000B");
    }

    #[test]
    fn budget_forms() {
        #[derive(Deserialize)]
        struct T {
            b: Budget,
        }
        let t: T = toml::from_str("b = \"80%\"").unwrap();
        assert_eq!(t.b, Budget::Percent(80.0));
        assert_eq!(t.b.resolve(1000), 800);
        let t: T = toml::from_str("b = \"10GiB\"").unwrap();
        assert_eq!(t.b, Budget::Bytes(10 << 30));
        assert!(toml::from_str::<T>("b = \"180%\"").is_err());
    }

    #[test]
    fn secret_is_masked_everywhere() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{MASK}\""));
        assert_eq!(s.expose(), "hunter2");
    }
}
