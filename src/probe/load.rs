//! The `/load` body: a CPU percentage from 0 to 100.

use super::*;

/// Parses a `/load` body: a CPU percentage from 0 to 100, surrounding whitespace allowed
/// (`12.3`, `12.3\n`, `7`). Anything else, including values outside 0-100, is rejected:
/// a backend that reports an impossible load is not believed.
pub(crate) fn parse_load(body: &[u8]) -> Result<f32, ProbeError> {
    const LONGEST: usize = 32;
    let text = std::str::from_utf8(body)
        .map_err(|_| ProbeError::BadLoad("not text".into()))?
        .trim();
    if text.is_empty() {
        return Err(ProbeError::BadLoad("empty".into()));
    }
    if text.len() > LONGEST {
        return Err(ProbeError::BadLoad(format!(
            "longer than {LONGEST} characters"
        )));
    }
    // f32's parser accepts "inf", "nan" and exponents; only plain decimals are loads.
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
    {
        return Err(ProbeError::BadLoad(format!("{text:?} is not a number")));
    }
    let load: f32 = text
        .parse()
        .map_err(|_| ProbeError::BadLoad(format!("{text:?} is not a number")))?;
    if !(0.0..=100.0).contains(&load) {
        return Err(ProbeError::BadLoad(format!("{load} is outside 0-100")));
    }
    Ok(load)
}
