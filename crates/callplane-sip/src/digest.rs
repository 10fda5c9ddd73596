//! HTTP digest authentication for SIP (RFC 3261 §22, RFC 8760 SHA-256), server side.
//! Sans-IO: parses Authorization headers, issues stateless time-stamped nonces and verifies
//! responses. The registrar and the INVITE path use it with the current time passed in.

use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;

/// A digest algorithm we can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// `H(username:realm:password)`: what a server needs to keep to verify responses.
    pub fn ha1(self, username: &str, realm: &str, password: &str) -> String {
        self.hash_hex(&format!("{username}:{realm}:{password}"))
    }

    fn hash_hex(self, input: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(input.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(input.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The parameters of a `Digest` credentials header (Authorization / Proxy-Authorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a Digest credentials header")]
    NotDigest,
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("malformed header")]
    Malformed,
}

/// Splits `a=b, c="d,e"` into a map, honouring quoted strings with backslash escapes.
fn parse_params(input: &str) -> Result<HashMap<String, String>, DigestError> {
    let mut out = HashMap::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let name = input
            .get(start..i)
            .ok_or(DigestError::Malformed)?
            .trim()
            .to_ascii_lowercase();
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(DigestError::Malformed);
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut closed = false;
            let mut seg_start = i;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if i + 1 < bytes.len() => {
                        value.push_str(input.get(seg_start..i).ok_or(DigestError::Malformed)?);
                        i += 1;
                        seg_start = i;
                        i += 1;
                    }
                    b'"' => {
                        value.push_str(input.get(seg_start..i).ok_or(DigestError::Malformed)?);
                        closed = true;
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
            if !closed {
                return Err(DigestError::Malformed);
            }
        } else {
            let vstart = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            value.push_str(input.get(vstart..i).ok_or(DigestError::Malformed)?.trim());
        }
        if name.is_empty() {
            return Err(DigestError::Malformed);
        }
        out.insert(name, value);
    }
    Ok(out)
}

impl DigestCredentials {
    /// Parses the value of an Authorization or Proxy-Authorization header.
    pub fn parse(header_value: &str) -> Result<DigestCredentials, DigestError> {
        let v = header_value.trim();
        let scheme_end = v.find(char::is_whitespace).ok_or(DigestError::NotDigest)?;
        let (scheme, rest) = v.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(DigestError::NotDigest);
        }
        let mut p = parse_params(rest)?;
        let mut take = |k: &'static str| p.remove(k).ok_or(DigestError::Missing(k));
        let username = take("username")?;
        let realm = take("realm")?;
        let nonce = take("nonce")?;
        let uri = take("uri")?;
        let response = take("response")?;
        let algorithm = match p.remove("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(&a).ok_or(DigestError::UnsupportedAlgorithm(a))?,
        };
        Ok(DigestCredentials {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            qop: p.remove("qop"),
            nc: p.remove("nc"),
            cnonce: p.remove("cnonce"),
        })
    }

    /// The response a client knowing `password` would send for `method`.
    pub fn expected_response(&self, method: &str, password: &str) -> String {
        let ha1 = self.algorithm.ha1(&self.username, &self.realm, password);
        self.expected_response_from_ha1(method, &ha1)
    }

    /// The response for `method` computed from the stored HA1 (no password needed).
    pub fn expected_response_from_ha1(&self, method: &str, ha1: &str) -> String {
        let alg = self.algorithm;
        let ha2 = alg.hash_hex(&format!("{}:{}", method, self.uri));
        match (&self.qop, &self.nc, &self.cnonce) {
            (Some(qop), Some(nc), Some(cnonce)) => {
                alg.hash_hex(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", self.nonce))
            }
            _ => alg.hash_hex(&format!("{ha1}:{}:{ha2}", self.nonce)),
        }
    }

    /// Whether the client's response matches `password`.
    pub fn verify(&self, method: &str, password: &str) -> bool {
        let ha1 = self.algorithm.ha1(&self.username, &self.realm, password);
        self.verify_ha1(method, &ha1)
    }

    /// Constant-time comparison of the client's response with the one the stored HA1 gives.
    pub fn verify_ha1(&self, method: &str, ha1: &str) -> bool {
        let expected = self.expected_response_from_ha1(method, &ha1.to_ascii_lowercase());
        let got = self.response.to_ascii_lowercase();
        if expected.len() != got.len() {
            return false;
        }
        expected
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Issues and checks nonces without server state: `<unix secs hex>.<serial hex>.<mac>` where
/// the mac binds the timestamp, the serial and the client's address to a per-process secret,
/// so a forged or stale nonce is recognised, and a nonce (with the credentials computed from
/// it) is worth nothing from any other address than the one it was issued to.
pub struct NonceIssuer {
    secret: [u8; 32],
    lifetime_secs: u64,
    /// Makes every nonce unique, even two issued to one address in the same second (two
    /// phones behind one NAT): the replay guard counts `nc` per nonce.
    serial: std::sync::atomic::AtomicU64,
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    Valid,
    /// Ours but expired: the client should retry with the new nonce (stale=true).
    Stale,
    Invalid,
}

impl NonceIssuer {
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        let start = u64::from_le_bytes(
            secret
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        );
        NonceIssuer {
            secret,
            lifetime_secs,
            serial: std::sync::atomic::AtomicU64::new(start),
        }
    }

    fn mac(&self, ts: u64, serial: u64, client: IpAddr) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(ts.to_be_bytes());
        h.update(serial.to_be_bytes());
        match client {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        let d = h.finalize();
        hex(d.get(..12).unwrap_or(&[]))
    }

    /// `<unix time>.<serial>.<mac of both and the client address>`, all hex.
    pub fn issue(&self, now_unix: u64, client: IpAddr) -> String {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "{:x}.{:x}.{}",
            now_unix,
            serial,
            self.mac(now_unix, serial, client)
        )
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// Whether `nonce` was issued by us to `client`, and is still fresh.
    pub fn check(&self, nonce: &str, now_unix: u64, client: IpAddr) -> NonceStatus {
        let mut parts = nonce.splitn(3, '.');
        let (Some(ts_hex), Some(serial_hex), Some(mac)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return NonceStatus::Invalid;
        };
        let (Ok(ts), Ok(serial)) = (
            u64::from_str_radix(ts_hex, 16),
            u64::from_str_radix(serial_hex, 16),
        ) else {
            return NonceStatus::Invalid;
        };
        if self.mac(ts, serial, client) != mac {
            return NonceStatus::Invalid;
        }
        if now_unix.saturating_sub(ts) > self.lifetime_secs || ts > now_unix + 5 {
            return NonceStatus::Stale;
        }
        NonceStatus::Valid
    }
}

/// Nonce counts already used, per nonce, so that a captured request cannot be replayed even
/// from the address its nonce was issued to (RFC 7616 §3.3: the server tracks `nc`).
/// Responses without `qop` carry no count: their nonce is good for one request. Entries live
/// as long as their nonce can be valid; the table is bounded.
pub struct ReplayGuard {
    lifetime_secs: u64,
    max_entries: usize,
    used: HashMap<String, NonceUse>,
}

struct NonceUse {
    issued: u64,
    /// Highest count seen and a window of the 64 counts below it, as a bitmap, so requests
    /// sent in parallel on one nonce may arrive out of order.
    highest: u64,
    window: u64,
}

/// What the replay guard found for a verified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    Fresh,
    Replayed,
}

impl ReplayGuard {
    pub fn new(lifetime_secs: u64, max_entries: usize) -> Self {
        ReplayGuard {
            lifetime_secs,
            max_entries,
            used: HashMap::new(),
        }
    }

    /// Records the use of (`nonce`, `nc`) for a request whose response verified. `nc` is the
    /// hex count (`None` without qop, counted as 1 and allowed once).
    pub fn check_and_record(&mut self, nonce: &str, nc: Option<&str>, now_unix: u64) -> Replay {
        let count = match nc {
            None => 1,
            Some(h) => match u64::from_str_radix(h, 16) {
                Ok(n) if n > 0 => n,
                _ => return Replay::Replayed,
            },
        };
        if !self.used.contains_key(nonce) && self.used.len() >= self.max_entries {
            let lifetime = self.lifetime_secs;
            self.used
                .retain(|_, u| now_unix.saturating_sub(u.issued) <= lifetime + 5);
            if self.used.len() >= self.max_entries {
                // Still full of live nonces: refuse new ones rather than forget used counts;
                // the client gets a fresh challenge and succeeds once entries age out.
                return Replay::Replayed;
            }
        }
        let issued = nonce
            .split_once('.')
            .and_then(|(ts, _)| u64::from_str_radix(ts, 16).ok())
            .unwrap_or(now_unix);
        let u = self.used.entry(nonce.to_string()).or_insert(NonceUse {
            issued,
            highest: 0,
            window: 0,
        });
        if count > u.highest {
            let shift = count - u.highest;
            u.window = if shift >= 64 { 0 } else { u.window << shift };
            u.window |= 1;
            u.highest = count;
            return Replay::Fresh;
        }
        let back = u.highest - count;
        if back >= 64 || u.window & (1 << back) != 0 {
            return Replay::Replayed;
        }
        u.window |= 1 << back;
        Replay::Fresh
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// A `WWW-Authenticate`/`Proxy-Authenticate` challenge value.
pub fn challenge(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    let mut s = format!(
        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
        algorithm.as_str()
    );
    if stale {
        s.push_str(", stale=true");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_md5_qop_auth() {
        // The worked example from RFC 2617 §3.5.
        let h = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = DigestCredentials::parse(h).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert!(c.verify("GET", "Circle Of Life"));
        assert!(!c.verify("GET", "circle of life"));
    }

    #[test]
    fn rfc7616_example_sha256() {
        // RFC 7616 §3.9.1 SHA-256 example.
        let h = r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let c = DigestCredentials::parse(h).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.verify("GET", "Circle of Life"));
    }

    #[test]
    fn no_qop_md5() {
        let mut c = DigestCredentials {
            username: "alice".into(),
            realm: "callplane".into(),
            nonce: "abc".into(),
            uri: "sip:127.0.0.1".into(),
            response: String::new(),
            algorithm: Algorithm::Md5,
            qop: None,
            nc: None,
            cnonce: None,
        };
        c.response = c.expected_response("REGISTER", "secret");
        assert!(c.verify("REGISTER", "secret"));
        assert!(!c.verify("INVITE", "secret"));
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for h in [
            "",
            "Digest",
            "Basic abc",
            "Digest username=\"x",
            "Digest =,,,",
            "Digest username=a, realm=b, nonce=c, uri=d, response=e, algorithm=SHA-512",
            "Digest \u{00e9}=\"\\",
        ] {
            assert!(DigestCredentials::parse(h).is_err(), "{h}");
        }
    }

    #[test]
    fn nonces_expire_cannot_be_forged_and_are_bound_to_the_client() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let n = NonceIssuer::new([7; 32], 300);
        let nonce = n.issue(1_000_000, ip);
        assert_eq!(n.check(&nonce, 1_000_100, ip), NonceStatus::Valid);
        assert_eq!(n.check(&nonce, 1_000_400, ip), NonceStatus::Stale);
        let elsewhere: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(n.check(&nonce, 1_000_100, elsewhere), NonceStatus::Invalid);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(n.check(&nonce, 1_000_100, v6), NonceStatus::Invalid);
        let other = NonceIssuer::new([8; 32], 300);
        assert_eq!(other.check(&nonce, 1_000_100, ip), NonceStatus::Invalid);
        assert_eq!(n.check("zz.zz", 1, ip), NonceStatus::Invalid);
        assert_eq!(n.check("f4240.1.zz", 1_000_001, ip), NonceStatus::Invalid);
        assert_eq!(n.check("nodot", 1, ip), NonceStatus::Invalid);
        // Two nonces for one address in one second differ (each has its own nc count).
        let again = n.issue(1_000_000, ip);
        assert_ne!(nonce, again);
        assert_eq!(n.check(&again, 1_000_000, ip), NonceStatus::Valid);
        // The serial is covered by the MAC.
        let (head, mac) = again.rsplit_once('.').unwrap();
        let (ts, serial) = head.split_once('.').unwrap();
        let serial = u64::from_str_radix(serial, 16).unwrap() + 1;
        let forged = format!("{ts}.{serial:x}.{mac}");
        assert_eq!(n.check(&forged, 1_000_000, ip), NonceStatus::Invalid);
    }

    #[test]
    fn replay_guard_refuses_a_used_count_and_allows_out_of_order_ones() {
        let mut g = ReplayGuard::new(300, 1000);
        let nonce = "f4240.abc";
        assert_eq!(
            g.check_and_record(nonce, Some("00000001"), 1_000_000),
            Replay::Fresh
        );
        assert_eq!(
            g.check_and_record(nonce, Some("00000001"), 1_000_001),
            Replay::Replayed
        );
        assert_eq!(
            g.check_and_record(nonce, Some("00000003"), 1_000_001),
            Replay::Fresh
        );
        // 2 arrives after 3: still fresh once, then used.
        assert_eq!(
            g.check_and_record(nonce, Some("00000002"), 1_000_001),
            Replay::Fresh
        );
        assert_eq!(
            g.check_and_record(nonce, Some("00000002"), 1_000_001),
            Replay::Replayed
        );
        // Far behind the window, zero, or not hex: refused.
        assert_eq!(
            g.check_and_record(nonce, Some("00000100"), 1_000_001),
            Replay::Fresh
        );
        assert_eq!(
            g.check_and_record(nonce, Some("00000004"), 1_000_001),
            Replay::Replayed
        );
        assert_eq!(
            g.check_and_record(nonce, Some("00000000"), 1_000_001),
            Replay::Replayed
        );
        assert_eq!(
            g.check_and_record(nonce, Some("zz"), 1_000_001),
            Replay::Replayed
        );
        // Without qop a nonce is good once.
        assert_eq!(
            g.check_and_record("f4240.def", None, 1_000_001),
            Replay::Fresh
        );
        assert_eq!(
            g.check_and_record("f4240.def", None, 1_000_002),
            Replay::Replayed
        );
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn replay_guard_is_bounded_and_forgets_expired_nonces() {
        let mut g = ReplayGuard::new(300, 2);
        assert_eq!(
            g.check_and_record("f4240.a", Some("1"), 1_000_000),
            Replay::Fresh
        );
        assert_eq!(
            g.check_and_record("f4240.b", Some("1"), 1_000_000),
            Replay::Fresh
        );
        // Full of live nonces: a new one is refused (a fresh challenge follows).
        assert_eq!(
            g.check_and_record("f4241.c", Some("1"), 1_000_010),
            Replay::Replayed
        );
        // Once the first two have expired they are dropped to make room.
        assert_eq!(
            g.check_and_record("f4241.c", Some("1"), 1_000_400),
            Replay::Fresh
        );
        assert_eq!(g.len(), 1);
    }
}
