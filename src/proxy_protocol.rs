//! The PROXY protocol, versions 1 (text) and 2 (binary), after HAProxy's
//! `doc/proxy-protocol.txt`: the header a balancer writes before any client byte so that the
//! server behind it learns the client's address, and reads when another balancer stands in
//! front of it.
//!
//! Pure and I/O-free: [`encode`] builds a header, [`parse`] reads one from the start of a
//! buffer and says how many bytes it took. Nothing in the input can make the parser look past
//! [`MAX_HEADER`] bytes or panic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Deserialize;

/// The version of the header ballast sends to a backend (`send_proxy: V1 | V2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Version {
    /// The text form: `PROXY TCP4 192.0.2.1 198.51.100.2 51000 80\r\n`.
    V1,
    /// The binary form: a 12-byte signature, then the addresses in network order.
    V2,
}

/// The most bytes a header may take before it is refused: a v1 line is at most 107 bytes;
/// a v2 header's length field could announce 64 KiB of TLVs, which no sender of ours needs.
pub const MAX_HEADER: usize = 1024;

/// The v2 signature, the first 12 bytes of every v2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, `\r\n` included (the specification's limit).
const V1_MAX: usize = 107;

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client's address and the address it connected to.
    Proxied {
        /// The client's address and port.
        source: SocketAddr,
        /// The address and port the client connected to.
        destination: SocketAddr,
    },
    /// No address to pass on: v1 `UNKNOWN`, or v2 `LOCAL` (a health check of the sender's
    /// own) or a family other than TCP over IPv4 or IPv6. The connection's own addresses
    /// stand.
    Local,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not the start of a v1 or v2 header.
    NotProxy,
    /// A v1 line that breaks the grammar, or is longer than 107 bytes.
    BadV1(&'static str),
    /// A v2 header that breaks the format.
    BadV2(&'static str),
    /// A header longer than [`MAX_HEADER`].
    TooLong,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotProxy => f.write_str("not a PROXY protocol header"),
            Error::BadV1(why) => write!(f, "bad PROXY v1 header: {why}"),
            Error::BadV2(why) => write!(f, "bad PROXY v2 header: {why}"),
            Error::TooLong => write!(f, "PROXY header longer than {MAX_HEADER} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// The header of `version` for a connection from `source` to `destination`. Both must be of
/// the same family; where they are not (an IPv4 client on an IPv6 listener shows as an
/// IPv4-mapped address), IPv4 is mapped into IPv6 so the header stays valid.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&SIGNATURE);
            out.push(0x21); // version 2, command PROXY
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

/// Reads a header from the start of `buf`: `Ok(Some((header, length)))` once it is whole,
/// `Ok(None)` while more bytes are needed (and could still make a valid header).
///
/// # Errors
/// [`Error::NotProxy`] as soon as the first bytes rule both versions out, [`Error::BadV1`] or
/// [`Error::BadV2`] for a malformed header, [`Error::TooLong`] past [`MAX_HEADER`].
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let buf = &buf[..buf.len().min(MAX_HEADER)];
    if is_prefix(buf, &SIGNATURE) {
        return if buf.len() < SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    if is_prefix(buf, b"PROXY ") {
        return if buf.len() < 6 {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(Error::NotProxy)
}

/// Whether `buf` and `expected` agree on their common length.
fn is_prefix(buf: &[u8], expected: &[u8]) -> bool {
    let n = buf.len().min(expected.len());
    buf[..n] == expected[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Error::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&window[..end]).map_err(|_| Error::BadV1("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |text: &str| -> Result<IpAddr, Error> {
                let ip: IpAddr = text.parse().map_err(|_| Error::BadV1("bad address"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(Error::BadV1("address of the wrong family"));
                }
                Ok(ip)
            };
            let port = |text: &str| -> Result<u16, Error> {
                // The specification forbids leading zeros and signs.
                if text.is_empty()
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || (text.len() > 1 && text.starts_with('0'))
                {
                    return Err(Error::BadV1("bad port"));
                }
                text.parse().map_err(|_| Error::BadV1("bad port"))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(Error::BadV1("expected PROXY TCP4|TCP6|UNKNOWN ...")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(Error::BadV2("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > MAX_HEADER {
        return Err(Error::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    // The family in the high nibble (UNSPEC, INET, INET6, UNIX), the transport in the low
    // one (UNSPEC, STREAM, DGRAM): other values "must be rejected as invalid by receivers".
    if !matches!(buf[13], 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Err(Error::BadV2("unknown address family or transport"));
    }
    let header = match command {
        0 => Header::Local,
        1 => match buf[13] {
            0x11 => {
                let a = body
                    .get(..12)
                    .ok_or(Error::BadV2("IPv4 addresses cut short"))?;
                let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
                let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), port(8)),
                    destination: SocketAddr::new(ip(4).into(), port(10)),
                }
            }
            0x21 => {
                let a = body
                    .get(..36)
                    .ok_or(Error::BadV2("IPv6 addresses cut short"))?;
                let ip = |i: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[i..i + 16]);
                    Ipv6Addr::from(octets)
                };
                let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), port(32)),
                    destination: SocketAddr::new(ip(16).into(), port(34)),
                }
            }
            // UNSPEC, datagrams, UNIX sockets: nothing ballast can pass on; the
            // connection's own addresses stand.
            _ => Header::Local,
        },
        _ => return Err(Error::BadV2("command is neither LOCAL nor PROXY")),
    };
    Ok(Some((header, total)))
}

/// The pair in one family: IPv4 mapped into IPv6 where the two differ.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let map = |a: SocketAddr| SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port());
    (map(source), map(destination))
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn v1_headers_are_byte_exact() {
        assert_eq!(
            encode(
                Version::V1,
                addr("192.0.2.1:51000"),
                addr("198.51.100.2:80")
            ),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 80\r\n"
        );
        assert_eq!(
            encode(Version::V1, addr("[2001:db8::1]:51000"), addr("[::1]:443")),
            b"PROXY TCP6 2001:db8::1 ::1 51000 443\r\n"
        );
    }

    #[test]
    fn v2_headers_are_byte_exact() {
        let mut v4 = SIGNATURE.to_vec();
        v4.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        v4.extend_from_slice(&[0xc7, 0x38, 0, 80]);
        assert_eq!(
            encode(
                Version::V2,
                addr("192.0.2.1:51000"),
                addr("198.51.100.2:80")
            ),
            v4
        );
        let v6 = encode(Version::V2, addr("[2001:db8::1]:51000"), addr("[::1]:443"));
        assert_eq!(
            &v6[..16],
            &[&SIGNATURE[..], &[0x21, 0x21, 0, 36]].concat()[..]
        );
        assert_eq!(v6.len(), 16 + 36);
        assert_eq!(
            &v6[16..32],
            &"2001:db8::1".parse::<Ipv6Addr>().expect("ip").octets()
        );
        assert_eq!(&v6[48..], &[0xc7, 0x38, 0x01, 0xbb]);
    }

    #[test]
    fn what_is_encoded_parses_back() {
        for (s, d) in [
            ("192.0.2.1:51000", "198.51.100.2:80"),
            ("[2001:db8::1]:1", "[::1]:65535"),
        ] {
            for version in [Version::V1, Version::V2] {
                let mut bytes = encode(version, addr(s), addr(d));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(
                    parse(&bytes),
                    Ok(Some((
                        Header::Proxied {
                            source: addr(s),
                            destination: addr(d)
                        },
                        len
                    ))),
                    "{version:?} {s} {d}"
                );
            }
        }
    }

    #[test]
    fn mixed_families_map_ipv4_into_ipv6() {
        let header = encode(Version::V1, addr("192.0.2.1:5"), addr("[::1]:80"));
        assert_eq!(header, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5 80\r\n");
    }

    #[test]
    fn local_and_unknown_keep_the_connection_addresses() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Header::Local, 15))));
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((Header::Local, 16))));
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        for version in [Version::V1, Version::V2] {
            let header = encode(version, addr("192.0.2.1:51000"), addr("198.51.100.2:80"));
            for n in 0..header.len() {
                assert_eq!(parse(&header[..n]), Ok(None), "{version:?} {n}");
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases: [(&[u8], Error); 8] = [
            (b"GET / HTTP/1.1\r\n", Error::NotProxy),
            (
                b"PROXY TCP4 1.2.3.4\r\n",
                Error::BadV1("expected PROXY TCP4|TCP6|UNKNOWN ..."),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
                Error::BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                Error::BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
                Error::BadV1("address of the wrong family"),
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                Error::BadV1("expected PROXY TCP4|TCP6|UNKNOWN ..."),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
                Error::BadV2("version is not 2"),
            ),
            (
                b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
                Error::BadV2("IPv4 addresses cut short"),
            ),
        ];
        for (input, error) in cases {
            assert_eq!(
                parse(input),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Err(Error::BadV1("no CRLF within 107 bytes")));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(Error::TooLong));
    }

    #[test]
    fn v2_families_and_transports_outside_the_spec_are_refused() {
        let header = |command: u8, family: u8| {
            let mut h = SIGNATURE.to_vec();
            h.extend_from_slice(&[0x20 | command, family, 0, 12]);
            h.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 2, 0x1f, 0x90, 0, 80]);
            h
        };
        for family in [0x41, 0x13, 0x01, 0x10, 0xff] {
            for command in [0, 1] {
                assert_eq!(
                    parse(&header(command, family)),
                    Err(Error::BadV2("unknown address family or transport")),
                    "family {family:#04x}, command {command}"
                );
            }
        }
        // Known ones ballast cannot pass on keep the connection's own addresses.
        for family in [0x00, 0x12, 0x22, 0x31, 0x32] {
            assert_eq!(parse(&header(1, family)), Ok(Some((Header::Local, 28))));
        }
    }

    /// Property: on arbitrary input (random bytes, and mutations of valid headers) the
    /// parser never panics, never claims more bytes than it was given, and never more than
    /// [`MAX_HEADER`].
    #[test]
    fn arbitrary_input_never_panics_or_overreads() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            encode(
                Version::V1,
                addr("192.0.2.1:51000"),
                addr("198.51.100.2:80"),
            ),
            encode(Version::V2, addr("[2001:db8::1]:1"), addr("[::1]:2")),
            SIGNATURE.to_vec(),
            b"PROXY ".to_vec(),
        ];
        for round in 0..200_000 {
            let mut input = if round % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let i = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[i] = next() as u8,
                    1 => input.truncate(i),
                    _ => input.insert(i, next() as u8),
                }
            }
            if let Ok(Some((_, used))) = parse(&input) {
                assert!(used <= input.len() && used <= MAX_HEADER, "{input:?}");
            }
        }
    }
}
