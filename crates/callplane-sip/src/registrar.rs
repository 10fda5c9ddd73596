//! The registrar's location service and its brute-force guard. Sans-IO: every method takes
//! the current time, so expiry and lock-outs are tested without sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Where a registered SIP user can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI the phone registered.
    pub contact: String,
    /// The address the REGISTER came from; requests go here (the phone may be behind NAT).
    pub source: SocketAddr,
    pub transport: crate::Transport,
    pub expires_at: Instant,
}

/// Usernames to their current bindings. One owner (the SIP server task set) behind a mutex.
#[derive(Default)]
pub struct Location {
    bindings: HashMap<String, Vec<Binding>>,
}

impl Location {
    /// Adds or refreshes a binding (same contact replaces); `expires == 0` removes it.
    pub fn update(&mut self, username: &str, binding: Binding, expires: Duration, now: Instant) {
        let list = self.bindings.entry(username.to_string()).or_default();
        list.retain(|b| b.contact != binding.contact && b.expires_at > now);
        if !expires.is_zero() {
            list.push(Binding {
                expires_at: now + expires,
                ..binding
            });
        }
        if list.is_empty() {
            self.bindings.remove(username);
        }
    }

    pub fn remove_all(&mut self, username: &str) {
        self.bindings.remove(username);
    }

    /// Live bindings of a user, newest last.
    pub fn lookup(&self, username: &str, now: Instant) -> Vec<Binding> {
        self.bindings
            .get(username)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    pub fn purge_expired(&mut self, now: Instant) {
        self.bindings.retain(|_, l| {
            l.retain(|b| b.expires_at > now);
            !l.is_empty()
        });
    }
}

/// What failures are counted against: a source address, or a (source, user) pair.
pub type LockoutKey = (IpAddr, Option<String>);

/// Counts failed authentications per key (see `LockoutKey`); too many in a window block the
/// key for a while so a password cannot be guessed at line rate. `max_failures == 0` turns
/// the lock-out off.
pub struct FailureLimiter<K = IpAddr> {
    max_failures: u32,
    window: Duration,
    block_for: Duration,
    sources: HashMap<K, FailureState>,
}

struct FailureState {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureLimiter<K> {
    pub fn new(max_failures: u32, window: Duration, block_for: Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            block_for,
            sources: HashMap::new(),
        }
    }

    pub fn is_blocked(&self, key: &K, now: Instant) -> bool {
        self.sources
            .get(key)
            .and_then(|s| s.blocked_until)
            .is_some_and(|until| until > now)
    }

    pub fn record_failure(&mut self, key: K, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        // Bound the table: forget idle sources when it grows large.
        if self.sources.len() > 100_000 {
            let window = self.window;
            self.sources.retain(|_, s| {
                now.duration_since(s.window_start) < window
                    || s.blocked_until.is_some_and(|u| u > now)
            });
        }
        let s = self.sources.entry(key).or_insert(FailureState {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(s.window_start) > self.window {
            s.window_start = now;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures >= self.max_failures {
            s.blocked_until = Some(now + self.block_for);
        }
    }

    pub fn record_success(&mut self, key: &K) {
        if let Some(s) = self.sources.get(key) {
            if s.blocked_until.is_none() {
                self.sources.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(contact: &str) -> Binding {
        Binding {
            contact: contact.into(),
            source: "127.0.0.1:5070".parse().unwrap(),
            transport: crate::Transport::Udp,
            expires_at: Instant::now(),
        }
    }

    #[test]
    fn bindings_expire_and_unregister() {
        let now = Instant::now();
        let mut loc = Location::default();
        loc.update("alice", b("sip:alice@1"), Duration::from_secs(60), now);
        loc.update("alice", b("sip:alice@2"), Duration::from_secs(120), now);
        assert_eq!(loc.lookup("alice", now).len(), 2);
        assert_eq!(loc.lookup("alice", now + Duration::from_secs(90)).len(), 1);
        loc.update("alice", b("sip:alice@2"), Duration::ZERO, now);
        assert_eq!(loc.lookup("alice", now).len(), 1);
        // Refresh replaces, does not duplicate.
        loc.update("alice", b("sip:alice@1"), Duration::from_secs(60), now);
        assert_eq!(loc.lookup("alice", now).len(), 1);
        assert!(loc.lookup("bob", now).is_empty());
    }

    #[test]
    fn limiter_blocks_after_repeated_failures_then_releases() {
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l = FailureLimiter::new(3, Duration::from_secs(60), Duration::from_secs(300));
        l.record_failure(ip, now);
        l.record_failure(ip, now);
        assert!(!l.is_blocked(&ip, now));
        l.record_failure(ip, now);
        assert!(l.is_blocked(&ip, now));
        assert!(!l.is_blocked(&"10.0.0.2".parse().unwrap(), now));
        assert!(!l.is_blocked(&ip, now + Duration::from_secs(301)));
        // Failures spread beyond the window do not add up.
        let ip2: IpAddr = "10.0.0.3".parse().unwrap();
        l.record_failure(ip2, now);
        l.record_failure(ip2, now + Duration::from_secs(61));
        l.record_failure(ip2, now + Duration::from_secs(62));
        assert!(!l.is_blocked(&ip2, now + Duration::from_secs(62)));
    }

    #[test]
    fn zero_max_failures_never_locks_out() {
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l = FailureLimiter::new(0, Duration::from_secs(60), Duration::from_secs(300));
        for _ in 0..100 {
            l.record_failure(ip, now);
        }
        assert!(!l.is_blocked(&ip, now));
    }

    #[test]
    fn per_user_keys_keep_other_users_of_a_locked_source_working() {
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l: FailureLimiter<LockoutKey> =
            FailureLimiter::new(2, Duration::from_secs(60), Duration::from_secs(300));
        let mallory = (ip, Some("alice".to_string()));
        l.record_failure(mallory.clone(), now);
        l.record_failure(mallory.clone(), now);
        assert!(l.is_blocked(&mallory, now));
        assert!(!l.is_blocked(&(ip, Some("bob".to_string())), now));
    }
}
