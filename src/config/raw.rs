//! The raw serde types of `balancer.ron` (unknown fields rejected) and the value rules
//! checked while parsing, so that a bad value is reported at its line and column.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Addr,
    pub(super) algorithm: Algorithm,
    pub(super) workers: Option<Checked<Workers>>,
    pub(super) backends: Backends,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) relay: RawRelay,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) load_poll: RawLoadPoll,
    pub(super) admin: Option<Addr>,
    pub(super) admin_token: Option<Token>,
    #[serde(default)]
    pub(super) access_log: AccessLog,
    #[serde(default)]
    pub(super) accept_proxy: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) splice: Option<Splice>,
    pub(super) max_pipes: Option<usize>,
    pub(super) pipe_size: Option<Checked<PipeSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<Checked<ClientLimit>>,
    pub(super) queue: Option<usize>,
    pub(super) queue_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) check: Option<RawCheck>,
    pub(super) interval: Option<Positive>,
    pub(super) timeout: Option<Positive>,
    pub(super) rise: Option<Checked<CheckCount>>,
    pub(super) fall: Option<Checked<CheckCount>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoadPoll {
    pub(super) interval: Option<Positive>,
    pub(super) timeout: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: Name,
    pub(super) addr: Addr,
    #[serde(default = "default_weight")]
    pub(super) weight: Checked<Weight>,
    pub(super) check: Option<RawCheck>,
    pub(super) load_addr: Option<Addr>,
    pub(super) load_path: Option<RequestPath>,
    pub(super) max_connections: Option<Checked<BackendMax>>,
    pub(super) send_proxy: Option<crate::proxy_protocol::Version>,
}

pub(super) fn default_weight() -> Checked<Weight> {
    Checked::new(1)
}

/// The list of backends, checked as a whole while it is parsed, so that an unusable list is
/// reported at its end.
pub(super) struct Backends(pub(super) Vec<RawBackend>);

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Backends;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of backends")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Backends, A::Error> {
                let mut backends: Vec<RawBackend> = Vec::new();
                while let Some(backend) = seq.next_element::<RawBackend>()? {
                    backends.push(backend);
                }
                if backends.is_empty() {
                    return Err(serde::de::Error::custom(
                        "no backends: `backends` must list at least one (name: \"...\", addr: \"host:port\")",
                    ));
                }
                if backends.iter().all(|b| b.weight.get() == 0) {
                    return Err(serde::de::Error::custom(
                        "every backend has weight 0 (drained): no backend can receive traffic",
                    ));
                }
                Ok(Backends(backends))
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// A rule for an integer setting, checked while parsing so that a value out of range is
/// reported at its line and column.
pub(super) trait Rule {
    const MIN: u64;
    const MAX: u64;
    fn complaint(value: u64) -> String;
}

/// An integer that obeys `R`.
pub(super) struct Checked<R>(pub(super) u64, std::marker::PhantomData<R>);

impl<R> Checked<R> {
    fn new(value: u64) -> Checked<R> {
        Checked(value, std::marker::PhantomData)
    }

    pub(super) fn get(&self) -> u64 {
        self.0
    }
}

impl<'de, R: Rule> Deserialize<'de> for Checked<R> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |&value: &u64| {
            if (R::MIN..=R::MAX).contains(&value) {
                Ok(())
            } else {
                Err(R::complaint(value))
            }
        })
        .map(Checked::new)
    }
}

/// Declares a `Rule`: its name, inclusive range and complaint about a value outside it.
macro_rules! rule {
    ($(#[$doc:meta])* $name:ident: $min:expr, $max:expr, |$value:ident| $complaint:expr) => {
        $(#[$doc])*
        pub(super) struct $name;
        impl Rule for $name {
            const MIN: u64 = $min;
            const MAX: u64 = $max;
            fn complaint($value: u64) -> String {
                $complaint
            }
        }
    };
}

rule!(
    /// `relay.pipe_size`: from the kernel's smallest pipe (one page) to 64 MiB.
    PipeSize: 4096, 64 << 20, |value| format!(
        "pipe_size {value}: expected 4096 to {} bytes", 64 << 20
    )
);
rule!(Weight: 0, MAX_WEIGHT as u64, |value| format!(
    "weight {value}: expected 0 (drained) to {MAX_WEIGHT}"
));
rule!(
    /// A backend's own `max_connections`.
    BackendMax: 1, u64::MAX, |value| format!(
        "max_connections {value}: expected at least 1 (use weight: 0 to drain)"
    )
);
rule!(
    /// `limits.max_connections`.
    ClientLimit: 1, u64::MAX, |value| format!("max_connections {value}: expected at least 1")
);
rule!(
    /// `health.rise` and `health.fall`: how many checks in a row flip a backend.
    CheckCount: 1, u32::MAX as u64, |value| format!(
        "{value} checks in a row: expected 1 or more"
    )
);
rule!(Workers: 1, MAX_WORKERS as u64, |value| format!(
    "workers is {value}: expected 1 to {MAX_WORKERS}"
));

/// A duration that must be greater than zero.
pub(super) struct Positive(pub(super) Duration);

/// Deserializes a `T` and holds it to `rule`, whose `Err` is the complaint, reported at the
/// value's line and column.
pub(super) fn held_to<'de, D, T>(
    d: D,
    rule: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(d)?;
    rule(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let HumanDuration(duration) = held_to(d, |HumanDuration(d): &HumanDuration| {
            if d.is_zero() {
                Err("a zero duration: expected more than zero, such as \"1s\"".into())
            } else {
                Ok(())
            }
        })?;
        Ok(Positive(duration))
    }
}

/// A backend name: not blank.
pub(super) struct Name(pub(super) String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |name: &String| {
            if name.trim().is_empty() {
                Err("a blank backend name: expected a name such as \"vm4\"".into())
            } else {
                Ok(())
            }
        })
        .map(Name)
    }
}

/// A request path we can put on a request line verbatim.
pub(super) struct RequestPath(pub(super) String);

impl<'de> Deserialize<'de> for RequestPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |path: &String| {
            let printable = path.bytes().all(|b| b.is_ascii_graphic());
            if path.starts_with('/') && printable && path.len() <= 1024 {
                Ok(())
            } else {
                Err(format!(
                    "path {path:?} is not usable: expected an absolute path such as \"/load\", without spaces or control characters"
                ))
            }
        })
        .map(RequestPath)
    }
}

/// `Check` as written in the file, with its path checked.
#[derive(Deserialize)]
#[serde(rename = "Check")]
pub(super) enum RawCheck {
    Tcp,
    Http(RequestPath),
}

impl From<RawCheck> for Check {
    fn from(raw: RawCheck) -> Check {
        match raw {
            RawCheck::Tcp => Check::Tcp,
            RawCheck::Http(path) => Check::Http(path.0),
        }
    }
}

/// The admin bearer token: printable ASCII without spaces, so it fits a header verbatim.
pub(super) struct Token(pub(super) String);

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |token: &String| {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                Err("admin_token must be non-empty printable ASCII without spaces".into())
            } else {
                Ok(())
            }
        })
        .map(Token)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<Positive>,
    pub(super) idle: Option<Positive>,
    pub(super) half_close: Option<Positive>,
    pub(super) grace: Option<HumanDuration>,
}

/// A socket address, with an error message that shows the expected form.
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.trim().parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: expected IP:port such as \"127.0.0.1:8081\" or \"[::1]:8081\""
            ))
        })
    }
}

/// A duration written for humans: `"250ms"`, `"2s"`, `"5m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: expected a whole number followed by ms, s, m or h, such as \"500ms\" or \"2s\""
            ))
        })
    }
}

/// Parses `"250ms"`, `"2s"`, `"5m"` or `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis)
}
