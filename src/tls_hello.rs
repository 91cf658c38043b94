//! The server name a TLS client asks for, read from its ClientHello without terminating or
//! changing anything: the first handshake message of TLS 1.0 to 1.3 (RFC 8446 section 4.1.2,
//! the same layout as TLS 1.2's), carried in one or more handshake records (section 5.1:
//! type 22, at most 2^14 bytes each) that may arrive over any number of TCP segments, and its
//! `server_name` extension (RFC 6066 section 3, a `host_name` entry).
//!
//! Pure and I/O-free: [`parse`] looks at the bytes a client has sent so far and says whether
//! they are a whole ClientHello (and which name it carries), need more, or are not a TLS
//! ClientHello at all. It never looks past the end of the ClientHello nor past
//! [`MAX_HELLO`] bytes, and nothing in the input can make it panic.

/// The most bytes (record headers included) a ClientHello may take before it is given up on:
/// a ClientHello is usually under 2 KiB, post-quantum key shares included.
pub const MAX_HELLO: usize = 16 * 1024;

/// The content type of a handshake record.
const HANDSHAKE: u8 = 22;
/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest record body (2^14 bytes).
const MAX_RECORD: usize = 1 << 14;
/// The extension type of `server_name`.
const SERVER_NAME: u16 = 0;
/// The `name_type` of a `host_name` entry.
const HOST_NAME: u8 = 0;
/// The longest host name a `server_name` may carry (a DNS name's 253 characters and then
/// some; RFC 6066 allows 2^16 - 1).
const MAX_NAME: usize = 255;

/// What the bytes received so far are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a ClientHello (or nothing yet): wait for more bytes.
    NeedMore,
    /// Not a TLS ClientHello ballast can read, and why: the first byte is not a handshake
    /// record, a record or the message breaks the format, or it is longer than
    /// [`MAX_HELLO`]. Waiting for more bytes would not change that.
    NotTls(&'static str),
    /// A whole ClientHello.
    Hello {
        /// Its `host_name`, lower-cased; `None` when it has no `server_name` extension (or one
        /// without a `host_name`).
        sni: Option<String>,
        /// The bytes it took, record headers included: everything up to the ClientHello's
        /// last byte. Bytes past it were not looked at.
        len: usize,
    },
}

/// Reads the ClientHello at the start of `bytes`, the first bytes a client sent.
pub fn parse(bytes: &[u8]) -> Parsed {
    let bytes = &bytes[..bytes.len().min(MAX_HELLO)];
    // Short of a whole ClientHello: more bytes may complete it, unless the bound is reached.
    let more = || {
        if bytes.len() == MAX_HELLO {
            Parsed::NotTls("a ClientHello longer than 16 KiB")
        } else {
            Parsed::NeedMore
        }
    };
    // The handshake bytes of the records read so far, and where each record's body ends in
    // `bytes` (to tell how many bytes the ClientHello took).
    let mut message: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        // The record header, checked byte by byte as it arrives so that a client that is not
        // speaking TLS is told apart from its first byte.
        let header = &bytes[at..bytes.len().min(at + 5)];
        if let Some(&kind) = header.first()
            && kind != HANDSHAKE
        {
            return Parsed::NotTls(if at == 0 {
                "the first byte is not a TLS handshake record"
            } else {
                "a record other than a handshake before the ClientHello ended"
            });
        }
        if let Some(&major) = header.get(1)
            && major != 3
        {
            return Parsed::NotTls("the record's version is not TLS");
        }
        let [_, _, _, high, low] = *header else {
            return more();
        };
        let record = usize::from(u16::from_be_bytes([high, low]));
        if record == 0 {
            return Parsed::NotTls("an empty handshake record");
        }
        if record > MAX_RECORD {
            return Parsed::NotTls("a record longer than 2^14 bytes");
        }
        let body_start = at + 5;
        let body_end = body_start + record;
        let body = &bytes[body_start..bytes.len().min(body_end)];
        message.extend_from_slice(body);
        // The message's own header: its type and length.
        if let Some(&kind) = message.first()
            && kind != CLIENT_HELLO
        {
            return Parsed::NotTls("the first handshake message is not a ClientHello");
        }
        if let [_, a, b, c, ..] = message[..] {
            let length = u32::from_be_bytes([0, a, b, c]) as usize;
            let whole = 4 + length;
            if whole > MAX_HELLO {
                return Parsed::NotTls("a ClientHello longer than 16 KiB");
            }
            if message.len() >= whole {
                // Where the message's last byte is: this record's body holds its tail.
                let len = body_start + body.len() - (message.len() - whole);
                return match client_hello(&message[4..whole]) {
                    Ok(sni) => Parsed::Hello { sni, len },
                    Err(why) => Parsed::NotTls(why),
                };
            }
        }
        if body.len() < record {
            // The record is not whole yet.
            return more();
        }
        at = body_end;
    }
}

/// A cursor over one message's bytes that never reads past them.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        if n > self.rest.len() {
            return Err(what);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// The server name of a ClientHello's body (the message without its 4-byte header).
fn client_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader { rest: body };
    let version = r.take(2, "a ClientHello cut short in its version")?;
    if version[0] != 3 {
        return Err("the ClientHello's version is not TLS");
    }
    r.take(32, "a ClientHello cut short in its random")?;
    let session = r.vec8("a ClientHello cut short in its session id")?;
    if session.len() > 32 {
        return Err("a session id longer than 32 bytes");
    }
    let suites = r.vec16("a ClientHello cut short in its cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("a ClientHello without a whole list of cipher suites");
    }
    let compression = r.vec8("a ClientHello cut short in its compression methods")?;
    if compression.is_empty() {
        return Err("a ClientHello without compression methods");
    }
    if r.rest.is_empty() {
        // TLS 1.2 and earlier may leave the extensions out: no server name then.
        return Ok(None);
    }
    let extensions = r.vec16("a ClientHello cut short in its extensions")?;
    if !r.rest.is_empty() {
        return Err("bytes after the ClientHello's extensions");
    }
    let mut r = Reader { rest: extensions };
    let mut found = None;
    while !r.rest.is_empty() {
        let kind = r.u16("an extension cut short")?;
        let data = r.vec16("an extension cut short")?;
        if kind != SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err("two server_name extensions");
        }
        found = Some(server_name(data)?);
    }
    Ok(found.flatten())
}

/// The `host_name` of a `server_name` extension's data (RFC 6066 section 3), lower-cased.
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader { rest: data };
    let list = r.vec16("a server_name extension cut short")?;
    if !r.rest.is_empty() || list.is_empty() {
        return Err("a malformed server_name extension");
    }
    let mut r = Reader { rest: list };
    let mut host = None;
    while !r.rest.is_empty() {
        let kind = r.u8("a server_name entry cut short")?;
        let name = r.vec16("a server_name entry cut short")?;
        if kind != HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err("two host names in the server_name extension");
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// A `host_name` as RFC 6066 has it: a DNS host name in ASCII. RFC 6066 says "without a
/// trailing dot", but some clients send one verbatim (`openssl s_client -servername
/// a.example.`): it is dropped, as the configuration's names drop theirs. Returned
/// lower-cased, since names compare without regard to case.
fn host_name(name: &[u8]) -> Result<String, &'static str> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let label_ok = |label: &[u8]| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > MAX_NAME || !name.split(|&b| b == b'.').all(label_ok) {
        return Err("a server name that is not a DNS host name");
    }
    Ok(name
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A ClientHello's body with the given extensions block (`None`: none at all).
    fn body(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(32);
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        b.extend_from_slice(&[1, 0]);
        if let Some(e) = extensions {
            b.extend_from_slice(&u16::try_from(e.len()).expect("short").to_be_bytes());
            b.extend_from_slice(e);
        }
        b
    }

    /// A `server_name` extension with one entry of type `kind`.
    fn sni_extension(kind: u8, name: &[u8]) -> Vec<u8> {
        let len = u16::try_from(name.len()).expect("short");
        let mut entry = vec![kind];
        entry.extend_from_slice(&len.to_be_bytes());
        entry.extend_from_slice(name);
        let mut e = SERVER_NAME.to_be_bytes().to_vec();
        e.extend_from_slice(&(len + 5).to_be_bytes());
        e.extend_from_slice(&(len + 3).to_be_bytes());
        e.extend_from_slice(&entry);
        e
    }

    /// Another extension (supported_versions), to sit beside `server_name`.
    const VERSIONS: &[u8] = &[0, 43, 0, 3, 2, 3, 4];

    /// The handshake message of `body`, cut into records of at most `per_record` bytes.
    fn records(body: &[u8], per_record: usize) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("short").to_be_bytes();
        let mut message = vec![CLIENT_HELLO, len[1], len[2], len[3]];
        message.extend_from_slice(body);
        let mut out = Vec::new();
        for chunk in message.chunks(per_record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).expect("short").to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn hello(name: &str) -> Vec<u8> {
        let mut e = VERSIONS.to_vec();
        e.extend_from_slice(&sni_extension(HOST_NAME, name.as_bytes()));
        records(&body(Some(&e)), MAX_RECORD)
    }

    fn sni(bytes: &[u8]) -> Option<String> {
        match parse(bytes) {
            Parsed::Hello { sni, len } => {
                assert_eq!(len, bytes.len(), "a hello takes all of its records");
                sni
            }
            other => panic!("expected a whole hello, got {other:?}"),
        }
    }

    #[test]
    fn reads_the_host_name_lower_cased() {
        assert_eq!(
            sni(&hello("Api.Example.COM")).as_deref(),
            Some("api.example.com")
        );
        // Sent verbatim by some clients, against RFC 6066: the same name.
        assert_eq!(
            sni(&hello("api.example.com.")).as_deref(),
            Some("api.example.com")
        );
    }

    #[test]
    fn no_server_name_and_no_extensions_are_hellos_without_a_name() {
        assert_eq!(sni(&records(&body(Some(VERSIONS)), MAX_RECORD)), None);
        assert_eq!(sni(&records(&body(None), MAX_RECORD)), None);
        // A server_name with only an entry of another type.
        let e = sni_extension(7, b"whatever");
        assert_eq!(sni(&records(&body(Some(&e)), MAX_RECORD)), None);
    }

    #[test]
    fn a_hello_split_across_records_and_segments() {
        let mut e = sni_extension(HOST_NAME, b"www.example.com");
        e.extend_from_slice(VERSIONS);
        let body = body(Some(&e));
        for per_record in [1, 2, 3, 5, 40, 1000] {
            let bytes = records(&body, per_record);
            assert_eq!(
                sni(&bytes).as_deref(),
                Some("www.example.com"),
                "{per_record}"
            );
            // Every prefix is the start of a hello: wait for more.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Parsed::NeedMore, "{per_record} {cut}");
            }
            // What follows the hello is not looked at.
            let mut more = bytes.clone();
            more.extend_from_slice(&[23, 3, 3, 0, 1, 0xff]);
            assert_eq!(
                parse(&more),
                Parsed::Hello {
                    sni: Some("www.example.com".into()),
                    len: bytes.len()
                }
            );
        }
    }

    #[test]
    fn not_tls_is_told_from_the_first_bytes() {
        assert_eq!(
            parse(b"G"),
            Parsed::NotTls("the first byte is not a TLS handshake record")
        );
        assert_eq!(
            parse(b"\x16\x01"),
            Parsed::NotTls("the record's version is not TLS")
        );
        // SSL 2's hello.
        assert_eq!(
            parse(&[0x80, 0x2e, 1, 3, 1]),
            Parsed::NotTls("the first byte is not a TLS handshake record")
        );
        assert_eq!(parse(&[22, 3, 1]), Parsed::NeedMore);
        assert_eq!(parse(&[]), Parsed::NeedMore);
    }

    #[test]
    fn broken_hellos_say_why() {
        let cases: [(Vec<u8>, &str); 7] = [
            (vec![22, 3, 1, 0, 0], "an empty handshake record"),
            (vec![22, 3, 1, 0x40, 1], "a record longer than 2^14 bytes"),
            (
                vec![22, 3, 1, 0, 4, 2, 0, 0, 0],
                "the first handshake message is not a ClientHello",
            ),
            (
                vec![22, 3, 1, 0, 4, 1, 1, 0, 0],
                "a ClientHello longer than 16 KiB",
            ),
            (
                records(&[3, 3], MAX_RECORD),
                "a ClientHello cut short in its random",
            ),
            (
                {
                    let mut r = records(&body(Some(VERSIONS)), 20);
                    r[20 + 5] = 23;
                    r
                },
                "a record other than a handshake before the ClientHello ended",
            ),
            (
                {
                    let mut e = sni_extension(HOST_NAME, b"a.example");
                    e.extend_from_slice(&sni_extension(HOST_NAME, b"b.example"));
                    records(&body(Some(&e)), MAX_RECORD)
                },
                "two server_name extensions",
            ),
        ];
        for (bytes, why) in cases {
            assert_eq!(parse(&bytes), Parsed::NotTls(why), "{bytes:?}");
        }
        for bad in [
            &b""[..],
            b"a..b",
            b"a b",
            b"caf\xc3\xa9.example",
            b"dot..",
            b".",
        ] {
            let e = sni_extension(HOST_NAME, bad);
            assert_eq!(
                parse(&records(&body(Some(&e)), MAX_RECORD)),
                Parsed::NotTls("a server name that is not a DNS host name"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_hello_past_the_bound_is_given_up() {
        // Padding makes the hello longer than 16 KiB: refused from its header on.
        let mut e = vec![0, 21, 0x40, 0];
        e.extend_from_slice(&[0; 0x4000]);
        let bytes = records(&body(Some(&e)), MAX_RECORD);
        assert_eq!(
            parse(&bytes[..9]),
            Parsed::NotTls("a ClientHello longer than 16 KiB")
        );
        // A hello in one-byte records, whose headers take the bound before the message ends.
        let mut e = vec![0, 21, 0x0b, 0xb8];
        e.extend_from_slice(&[0; 3000]);
        let bytes = records(&body(Some(&e)), 1);
        assert!(bytes.len() > MAX_HELLO);
        assert_eq!(parse(&bytes[..MAX_HELLO - 1]), Parsed::NeedMore);
        assert_eq!(
            parse(&bytes),
            Parsed::NotTls("a ClientHello longer than 16 KiB")
        );
    }

    /// The first flight of a real TLS client (rustls) asking for `name`.
    fn rustls_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write");
        }
        out
    }

    #[test]
    fn reads_a_real_clients_hello() {
        let bytes = rustls_hello("API.example.com");
        assert_eq!(sni(&bytes).as_deref(), Some("api.example.com"));
        // rustls sends no SNI for an IP address.
        assert_eq!(sni(&rustls_hello("192.0.2.1")), None);
    }

    /// Property: on arbitrary input (random bytes, and mutations of valid hellos, real ones
    /// included) the parser never panics, and a whole hello never claims more bytes than it
    /// was given or than [`MAX_HELLO`]; its verdict on exactly those bytes is the same, so it
    /// did not look past them.
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
            hello("api.example.com"),
            records(&body(Some(VERSIONS)), 7),
            records(&body(None), MAX_RECORD),
            rustls_hello("www.example.com"),
            vec![22, 3, 1],
        ];
        for round in 0..100_000 {
            let mut input = if round % 3 == 0 {
                let len = (next() % 600) as usize;
                let mut random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Mostly handshake records, so that random bytes get past the first check.
                if round % 2 == 0 && !random.is_empty() {
                    random[0] = HANDSHAKE;
                    if random.len() > 1 {
                        random[1] = 3;
                    }
                }
                random
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            for _ in 0..(next() % 5) {
                if input.is_empty() {
                    break;
                }
                let i = (next() % input.len() as u64) as usize;
                match next() % 4 {
                    0 => input[i] = next() as u8,
                    1 => input.truncate(i),
                    2 => input.insert(i, next() as u8),
                    _ => input.extend((0..next() % 64).map(|_| next() as u8)),
                }
            }
            if let Parsed::Hello { sni, len } = parse(&input) {
                assert!(len <= input.len() && len <= MAX_HELLO, "{input:?}");
                assert_eq!(
                    parse(&input[..len]),
                    Parsed::Hello { sni, len },
                    "{input:?}"
                );
            }
        }
    }
}
