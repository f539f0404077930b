//! Throttles for the endpoints an attacker could hammer: sign-in (per account and per client
//! address), client authentication at `/oauth2/token` and `/oauth2/revoke` (per `client_id` and
//! per address), and dynamic client registration (per address and overall).
//!
//! Failures are limited with growing delays ([`Backoff`]): a key's first `free` failures cost
//! nothing, then each further attempt must wait 1 s, 2 s, 4 s, … up to a maximum after the
//! previous failure; one that comes too early is refused before any password or secret is
//! checked. A sign-in counts as a failure from the moment it starts until it
//! [`Attempt::succeeded`], so a concurrent burst cannot start more argon2 computations than the
//! allowance. A client authentication (one SHA-256) counts only once it has failed, so a
//! client's own concurrent requests never hold each other up. Registration is a plain rate
//! (GCRA, `governor`).
//!
//! All of this is in memory: every replica keeps its own counts (README.md says so).

use std::convert::Infallible;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The first delay once a key's free failures are used up; it doubles with each failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// The client address a limit is keyed on: the peer's IP, IPv4-mapped IPv6 as IPv4, IPv6
/// reduced to its /64 (one host commonly holds a whole /64). Without connection info (a
/// router driven in-process) every request shares the unspecified address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn of(extensions: &http::Extensions) -> Self {
        let ip = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Self(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.extensions))
    }
}

/// How long to wait before trying again, rounded up to whole seconds (at least 1), for
/// `Retry-After`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Failures per key with growing delays.
pub struct Backoff {
    free: u32,
    max_delay: Duration,
    entries: DashMap<u64, Failures>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Backoff {
    pub fn new(free: u32, max_delay: Duration) -> Self {
        Self {
            free,
            max_delay,
            entries: DashMap::new(),
            hasher: Default::default(),
        }
    }

    /// The wait required after `count` failures.
    fn delay(&self, count: u32) -> Duration {
        match count.checked_sub(self.free) {
            None => Duration::ZERO,
            Some(over) => FIRST_DELAY
                .checked_mul(1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX))
                .map_or(self.max_delay, |d| d.min(self.max_delay)),
        }
    }

    /// Failures are forgotten after this long without one.
    fn memory(&self) -> Duration {
        self.max_delay * 2
    }

    fn key(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// How long `key` must still wait at `now` (zero when it may go).
    fn wait(&self, f: &Failures, now: Instant) -> Duration {
        let since = now.saturating_duration_since(f.last);
        if since >= self.memory() {
            return Duration::ZERO;
        }
        self.delay(f.count).saturating_sub(since)
    }

    /// Whether `key` may try at `now`: `Err(wait)` when it comes too early.
    fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        match self.entries.get(&key).map(|f| self.wait(&f, now)) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `key` at `now`.
    fn fail(&self, key: u64, now: Instant) {
        let mut entry = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        let f = entry.value_mut();
        if now.saturating_duration_since(f.last) >= self.memory() {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// Starts an attempt for `key` at `now`: `Err(wait)` when it comes too early (nothing is
    /// counted), else the attempt counts as a failure until [`Backoff::forgive`]. One lock
    /// for both steps, so concurrent attempts are counted one by one.
    fn begin(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let mut entry = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        let f = entry.value_mut();
        let wait = self.wait(f, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        if now.saturating_duration_since(f.last) >= self.memory() {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        Ok(())
    }

    /// Takes back one failure counted by [`Backoff::begin`] (the attempt succeeded).
    fn forgive(&self, key: u64) {
        self.entries.remove_if_mut(&key, |_, f| {
            f.count = f.count.saturating_sub(1);
            f.count == 0
        });
    }

    /// Forgets every failure of `key`.
    fn reset(&self, key: u64) {
        self.entries.remove(&key);
    }

    /// Drops keys whose failures are forgotten.
    pub fn prune(&self, now: Instant) {
        let memory = self.memory();
        self.entries
            .retain(|_, f| now.saturating_duration_since(f.last) < memory);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the limits are set to (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    pub login_failures_per_account: u32,
    pub login_failures_per_ip: u32,
    pub client_auth_failures_per_client: u32,
    pub client_auth_failures_per_ip: u32,
    pub failure_delay_max: Duration,
    pub registrations_per_ip_per_minute: u32,
    pub registrations_per_minute: u32,
}

/// Every throttle of the authorization server.
pub struct Limits {
    login_account: Backoff,
    login_ip: Backoff,
    client_auth_client: Backoff,
    client_auth_ip: Backoff,
    register_ip: DefaultKeyedRateLimiter<ClientIp>,
    register_all: DefaultDirectRateLimiter,
}

/// A sign-in under way, counted against its account and address; report success with
/// [`Attempt::succeeded`].
#[must_use]
pub struct Attempt<'a> {
    limits: &'a Limits,
    account: u64,
    address: u64,
}

impl Attempt<'_> {
    /// The password was right: the account's failures are forgotten, and the address's count
    /// of this attempt taken back.
    pub fn succeeded(self) {
        self.limits.login_account.reset(self.account);
        self.limits.login_ip.forgive(self.address);
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1) is non-zero"))
}

impl Limits {
    pub fn new(s: LimitSettings) -> Self {
        let max = s.failure_delay_max;
        Self {
            login_account: Backoff::new(s.login_failures_per_account, max),
            login_ip: Backoff::new(s.login_failures_per_ip, max),
            client_auth_client: Backoff::new(s.client_auth_failures_per_client, max),
            client_auth_ip: Backoff::new(s.client_auth_failures_per_ip, max),
            register_ip: RateLimiter::keyed(per_minute(s.registrations_per_ip_per_minute)),
            register_all: RateLimiter::direct(per_minute(s.registrations_per_minute)),
        }
    }

    /// Starts a sign-in attempt for `email` from `ip`: `Err(wait)` when either must wait.
    pub fn begin_login(&self, ip: ClientIp, email: &str) -> Result<Attempt<'_>, Duration> {
        let account = self.login_account.key(email.trim().to_ascii_lowercase());
        let address = self.login_ip.key(ip);
        let now = Instant::now();
        self.login_ip.begin(address, now)?;
        if let Err(wait) = self.login_account.begin(account, now) {
            self.login_ip.forgive(address);
            return Err(wait);
        }
        Ok(Attempt {
            limits: self,
            account,
            address,
        })
    }

    /// Whether a client authentication for `client_id` (when the request names one) from
    /// `ip` may be tried now: `Err(wait)` when either must wait.
    pub fn check_client_auth(&self, ip: ClientIp, client_id: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        self.client_auth_ip
            .check(self.client_auth_ip.key(ip), now)?;
        self.client_auth_client
            .check(self.client_auth_client.key(client_id), now)
    }

    /// Counts a failed client authentication against `client_id` and `ip`.
    pub fn client_auth_failed(&self, ip: ClientIp, client_id: Option<&str>) {
        let now = Instant::now();
        self.client_auth_ip.fail(self.client_auth_ip.key(ip), now);
        self.client_auth_client
            .fail(self.client_auth_client.key(client_id), now);
    }

    /// Whether `ip` may register a client now: `Err(wait)` past its rate or the overall one.
    pub fn check_registration(&self, ip: ClientIp) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        self.register_ip
            .check_key(&ip)
            .map_err(|n| n.wait_time_from(now))?;
        self.register_all.check().map_err(|n| n.wait_time_from(now))
    }

    /// Forgets what no longer limits anyone; call periodically.
    pub fn prune(&self) {
        let now = Instant::now();
        for b in [
            &self.login_account,
            &self.login_ip,
            &self.client_auth_client,
            &self.client_auth_ip,
        ] {
            b.prune(now);
        }
        self.register_ip.retain_recent();
        self.register_ip.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn delays_grow_after_the_free_failures_and_stop_at_the_maximum() {
        let b = Backoff::new(2, MAX);
        let t0 = Instant::now();
        assert_eq!(b.begin(1, t0), Ok(()));
        assert_eq!(b.begin(1, t0), Ok(()));
        // Two failures: the third attempt waits 1 s after the last.
        assert_eq!(b.begin(1, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.begin(1, t1), Ok(()));
        assert_eq!(
            b.begin(1, t1 + Duration::from_millis(500)),
            Err(Duration::from_millis(1500))
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.begin(1, t2), Ok(()));
        assert_eq!(b.begin(1, t2), Err(Duration::from_secs(4)));
        assert_eq!(b.delay(40), MAX);
        // Another key is not held up.
        assert_eq!(b.begin(2, t2), Ok(()));
    }

    #[test]
    fn success_takes_back_its_own_count_and_old_failures_are_forgotten() {
        let b = Backoff::new(1, MAX);
        let t0 = Instant::now();
        assert_eq!(b.check(1, t0), Ok(()));
        b.fail(1, t0);
        assert_eq!(b.check(1, t0), Err(Duration::from_secs(1)));
        b.reset(1);
        assert_eq!(b.begin(1, t0), Ok(()));
        b.forgive(1);
        assert!(b.is_empty());
        assert_eq!(b.begin(1, t0), Ok(()));
        assert!(b.begin(1, t0).is_err());
        let later = t0 + MAX * 2;
        assert_eq!(b.begin(1, later), Ok(()));
        b.prune(later + MAX * 2);
        assert!(b.is_empty());
    }

    #[test]
    fn a_refused_account_does_not_count_against_the_address() {
        let limits = Limits::new(LimitSettings {
            login_failures_per_account: 1,
            login_failures_per_ip: 3,
            client_auth_failures_per_client: 1,
            client_auth_failures_per_ip: 1,
            failure_delay_max: MAX,
            registrations_per_ip_per_minute: 1,
            registrations_per_minute: 2,
        });
        let ip = ClientIp(IpAddr::from([10, 0, 0, 1]));
        let _ = limits.begin_login(ip, "a@example.com").unwrap();
        for _ in 0..5 {
            assert!(limits.begin_login(ip, "A@example.com ").is_err());
        }
        // The address has one failure of its three.
        let _ = limits.begin_login(ip, "b@example.com").unwrap();
        let ok = limits.begin_login(ip, "c@example.com").unwrap();
        ok.succeeded();
        let _ = limits.begin_login(ip, "d@example.com").unwrap();
        assert!(limits.begin_login(ip, "e@example.com").is_err());

        // A client's concurrent attempts do not count; its failures do.
        assert!(limits.check_client_auth(ip, Some("app_x")).is_ok());
        assert!(limits.check_client_auth(ip, Some("app_x")).is_ok());
        limits.client_auth_failed(ip, Some("app_x"));
        assert!(limits.check_client_auth(other_ip(), Some("app_x")).is_err());
        assert!(limits.check_client_auth(ip, Some("app_y")).is_err());

        assert!(limits.check_registration(ip).is_ok());
        assert!(limits.check_registration(ip).is_err());
        let other = ClientIp(IpAddr::from([10, 0, 0, 2]));
        assert!(limits.check_registration(other).is_ok());
        let third = ClientIp(IpAddr::from([10, 0, 0, 3]));
        assert!(limits.check_registration(third).is_err());
    }

    fn other_ip() -> ClientIp {
        ClientIp(IpAddr::from([10, 0, 0, 9]))
    }

    #[test]
    fn addresses_are_keyed_by_host_or_ipv6_prefix() {
        let mut ext = http::Extensions::new();
        let of = |ext: &mut http::Extensions, addr: &str| {
            ext.insert(ConnectInfo(addr.parse::<SocketAddr>().unwrap()));
            ClientIp::of(ext).0.to_string()
        };
        assert_eq!(of(&mut ext, "192.0.2.7:5000"), "192.0.2.7");
        assert_eq!(of(&mut ext, "[::ffff:192.0.2.7]:5000"), "192.0.2.7");
        assert_eq!(
            of(&mut ext, "[2001:db8:1:2:aaaa::1]:5000"),
            "2001:db8:1:2::"
        );
        assert_eq!(
            ClientIp::of(&http::Extensions::new()).0.to_string(),
            "0.0.0.0"
        );
    }
}
