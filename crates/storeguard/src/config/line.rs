//! What the config says about one GPIO line of a panic button. The button module reads
//! these; they live here so that the config depends on nothing above it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Pull resistor applied to the input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bias {
    /// Internal pull-up enabled.
    PullUp,
    /// Internal pull-down enabled.
    PullDown,
    /// Bias explicitly disabled (an external resistor is fitted).
    None,
    /// Leave whatever the firmware/device tree configured.
    #[default]
    AsIs,
}

/// How the button contact is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wiring {
    /// Pressing closes the circuit. A cut wire is indistinguishable from "idle".
    NormallyOpen,
    /// Pressing opens the circuit, so a cut wire reads as a press that never ends.
    NormallyClosed,
}

impl Wiring {
    /// Whether the logical level `active` ("circuit closed") means "pressed".
    pub fn is_pressed(self, active: bool) -> bool {
        match self {
            Wiring::NormallyOpen => active,
            Wiring::NormallyClosed => !active,
        }
    }
}

/// A line on a chip: its offset, or its name as published by the driver / device tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LineId {
    /// Offset within the chip (0-based).
    Offset(u32),
    /// Line name, e.g. `"GPIO17"` or `"PANIC_BTN"`.
    Name(String),
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineId::Offset(o) => write!(f, "{o}"),
            LineId::Name(n) => write!(f, "'{n}'"),
        }
    }
}

/// Config-facing settings for one button line (embedded in the daemon config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LineSettings {
    /// Chip as a name (`gpiochip0`), a number (`0`), a path (`/dev/gpiochip0`) or a chip label.
    pub chip: String,
    /// Line offset or line name.
    pub line: LineId,
    /// Invert the physical level so that "circuit closed" reads as active.
    #[serde(default)]
    pub active_low: bool,
    /// Pull resistor setting.
    #[serde(default)]
    pub bias: Bias,
    /// Contact wiring; no default on purpose, it decides what a cut wire looks like.
    pub wiring: Wiring,
    /// Level changes shorter than this are contact bounce.
    #[serde(default = "default_debounce", with = "duration_text")]
    pub debounce: Duration,
}

fn default_debounce() -> Duration {
    Duration::from_millis(20)
}

/// Serde adapter for human durations such as `"20ms"` or `"1m 30s"`.
pub(crate) mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}
