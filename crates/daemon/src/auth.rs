//! Client tokens (`docs/design/security.md`, "Client tokens"): what a
//! token is, how it is stored and replicated, and how a request's
//! permission is decided. The HTTP side (the route table, the middleware,
//! the `/v1/tokens` routes) is in [`crate::api::auth`].
//!
//! A token is `chorus_` and 64 hex digits of OS randomness (256 bits). Only
//! its BLAKE3 hash is stored: the secret has full entropy, so a fast hash
//! is as safe as a slow one against guessing and costs ~1 µs on the hot
//! path (etcd's bcrypt made auth its bottleneck, etcd#9615). Records live
//! in the reserved eventual namespace [`TOKENS_NAMESPACE`] as LWW values,
//! so they replicate to every node the way data does (edges outside the
//! Raft tiers included), survive restarts, and a revocation (the record
//! rewritten with `revoked_ms`) reaches every node in one push. Each node
//! keeps the table in memory, rebuilt from its replica every
//! [`REFRESH_INTERVAL`].

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The reserved eventual namespace of token records. Every name starting
/// with [`RESERVED_PREFIX`] is refused to clients.
pub const TOKENS_NAMESPACE: &str = "_chorus.tokens";
/// Namespaces with this prefix belong to chorus itself.
pub const RESERVED_PREFIX: &str = "_chorus.";
/// The key that marks a cluster as bootstrapped.
pub const BOOTSTRAP_KEY: &str = "bootstrap";
/// Token records are stored under this prefix and the token's name.
pub const RECORD_PREFIX: &str = "t/";
/// Tokens (live, revoked or expired records) a cluster holds at most; a
/// create past it is refused (409 `too_many_tokens`).
pub const TOKENS_MAX: usize = 10_000;
/// Rules of one token at most.
pub const RULES_PER_TOKEN_MAX: usize = 64;
/// Bytes of a token name at most.
pub const TOKEN_NAME_BYTES_MAX: usize = 128;
/// How often each node rebuilds its token table from its replica: with
/// push replication in milliseconds, a revocation holds cluster-wide well
/// within the 2 s the spec promises.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// The prefix of every token secret.
pub const SECRET_PREFIX: &str = "chorus_";
/// Longest `--ttl` accepted.
pub const TTL_MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

/// What a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    Read,
    Write,
    Watch,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Watch => "watch",
        }
    }
}

/// One rule: a namespace (exact, or a prefix when it ends with `*`), a key
/// prefix, and what it grants there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub ns: String,
    #[serde(default)]
    pub key_prefix: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub watch: bool,
}

impl Rule {
    fn covers_namespace(&self, ns: &str) -> bool {
        match self.ns.strip_suffix('*') {
            Some(prefix) => ns.starts_with(prefix),
            None => self.ns == ns,
        }
    }

    fn grants(&self, perm: Perm) -> bool {
        match perm {
            Perm::Read => self.read,
            Perm::Write => self.write,
            Perm::Watch => self.watch,
        }
    }

    /// The rule as `NS[/PREFIX]`, the form `chorus token create` takes.
    pub fn target(&self) -> String {
        if self.key_prefix.is_empty() { self.ns.clone() } else { format!("{}/{}", self.ns, self.key_prefix) }
    }
}

/// A token's record as stored (JSON in the LWW value of `t/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// BLAKE3 of the secret, hex.
    pub hash: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Every permission, and the cluster operations: namespace creation,
    /// Raft membership, tokens, backups.
    #[serde(default)]
    pub admin: bool,
    /// `/metrics` (unless `metrics_public`).
    #[serde(default)]
    pub metrics: bool,
    pub created_ms: u64,
    /// `None`: never expires (only the bootstrap token).
    pub expires_ms: Option<u64>,
    /// Set by a revocation: the record stays so the revocation replicates.
    pub revoked_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether the token may be used at `now_ms`.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// Whether the token grants `perm` on `key` (or every key under the
    /// prefix `key`) of namespace `ns`.
    pub fn allows(&self, perm: Perm, ns: &str, key: &str) -> bool {
        self.admin
            || self.rules.iter().any(|r| r.grants(perm) && r.covers_namespace(ns) && key.starts_with(&r.key_prefix))
    }

    /// Whether some rule grants `perm` somewhere in namespace `ns`.
    pub fn allows_namespace(&self, perm: Perm, ns: &str) -> bool {
        self.admin || self.rules.iter().any(|r| r.grants(perm) && r.covers_namespace(ns))
    }

    /// Whether any rule grants `perm` somewhere.
    pub fn allows_anywhere(&self, perm: Perm) -> bool {
        self.admin || self.rules.iter().any(|r| r.grants(perm))
    }

    /// `valid`, `expired` or `revoked` at `now_ms`.
    pub fn state_at(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if !self.valid_at(now_ms) {
            "expired"
        } else {
            "valid"
        }
    }
}

/// Milliseconds since the Unix epoch, from the OS.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// BLAKE3 of a secret, hex: the only form of a token that is stored.
pub fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A fresh secret: [`SECRET_PREFIX`] and 256 bits of OS randomness in hex.
pub fn new_secret() -> String {
    use rand::RngExt;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SECRET_PREFIX}{hex}")
}

/// Why a token request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenSpecError {
    #[error("invalid token name {0:?}: use 1-128 characters of A-Z a-z 0-9 _ - .")]
    BadName(String),
    #[error("invalid rule {0:?}: use NS, NS*, NS/PREFIX or NS*/PREFIX with a valid namespace name")]
    BadRule(String),
    #[error("a token has at most {RULES_PER_TOKEN_MAX} rules")]
    TooManyRules,
    #[error("invalid duration {0:?}: use a number and s, m, h or d (30m, 12h, 90d), at most 10 years")]
    BadTtl(String),
    #[error("a token needs at least one rule, --admin or --metrics")]
    Empty,
}

/// Whether `name` may name a token.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOKEN_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses `NS[/PREFIX]` (`NS` may end with `*`: every namespace starting
/// with the rest) into the namespace pattern and the key prefix.
pub fn parse_target(spec: &str) -> Result<(String, String), TokenSpecError> {
    let (ns, prefix) = match spec.split_once('/') {
        Some((ns, prefix)) => (ns, prefix),
        None => (spec, ""),
    };
    let bare = ns.strip_suffix('*').unwrap_or(ns);
    let ok = if ns.ends_with('*') {
        bare.is_empty() || chorus_core::node::valid_namespace_name(bare)
    } else {
        chorus_core::node::valid_namespace_name(bare)
    };
    if !ok {
        return Err(TokenSpecError::BadRule(spec.to_string()));
    }
    Ok((ns.to_string(), prefix.to_string()))
}

/// Builds the rules of `--read`, `--write` and `--watch` targets: one rule
/// per distinct target, with every permission named for it.
pub fn build_rules(read: &[String], write: &[String], watch: &[String]) -> Result<Vec<Rule>, TokenSpecError> {
    let mut rules: Vec<Rule> = Vec::new();
    for (specs, perm) in [(read, Perm::Read), (write, Perm::Write), (watch, Perm::Watch)] {
        for spec in specs {
            let (ns, key_prefix) = parse_target(spec)?;
            let index = match rules.iter().position(|r| r.ns == ns && r.key_prefix == key_prefix) {
                Some(i) => i,
                None => {
                    rules.push(Rule { ns, key_prefix, read: false, write: false, watch: false });
                    rules.len() - 1
                }
            };
            let rule = &mut rules[index];
            match perm {
                Perm::Read => rule.read = true,
                Perm::Write => rule.write = true,
                Perm::Watch => rule.watch = true,
            }
        }
    }
    if rules.len() > RULES_PER_TOKEN_MAX {
        return Err(TokenSpecError::TooManyRules);
    }
    Ok(rules)
}

/// Parses a duration such as `30m`, `12h`, `90d` (also `45s`).
pub fn parse_ttl(text: &str) -> Result<Duration, TokenSpecError> {
    let bad = || TokenSpecError::BadTtl(text.to_string());
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let number: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    let ttl = Duration::from_secs(number.checked_mul(seconds_per).ok_or_else(bad)?);
    if ttl.is_zero() || ttl > TTL_MAX {
        return Err(bad());
    }
    Ok(ttl)
}

/// Whose bucket a request takes from: its token's, or its address's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    Token(String),
    Addr(std::net::IpAddr),
}

impl RateKey {
    /// The key of a request without a token: its IPv4 address, or its
    /// IPv6 /64 (one host usually holds a whole /64, so per-address keys
    /// would let it fill the table and push everyone into the overflow
    /// bucket).
    pub fn of_addr(ip: std::net::IpAddr) -> RateKey {
        match ip {
            std::net::IpAddr::V4(_) => RateKey::Addr(ip),
            std::net::IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                RateKey::Addr(std::net::IpAddr::V6(std::net::Ipv6Addr::from(bits)))
            }
        }
    }
}

/// The client address of an HTTP request, put in its extensions by the
/// server.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// A caller the table recognised.
#[derive(Clone, Debug)]
pub struct Principal {
    pub record: Arc<TokenRecord>,
}

/// This node's view of the token table, rebuilt from its replica.
#[derive(Debug)]
pub struct Auth {
    /// `auth_enabled`: off, every route answers without a token.
    pub enabled: bool,
    /// `metrics_public`: `/metrics` answers without a token.
    pub metrics_public: bool,
    table: RwLock<Table>,
    /// Requests a second per client (token name, or IP address without a
    /// token); off at 0.
    pub client_rate: crate::rate::RateLimiter<RateKey>,
    /// Held by a bootstrap, a create and a revoke from their check to their
    /// write: two at once on one node cannot both pass the check (two
    /// bootstraps, or two tokens of one name, the later overwriting the
    /// earlier whose secret would then fail). Nodes do not coordinate.
    pub writes: tokio::sync::Mutex<()>,
    /// Bumped by every [`Auth::upsert`]: a refresh that read the replica
    /// before an upsert does not replace the table with that older view.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<String, Arc<TokenRecord>>,
    records: Vec<Arc<TokenRecord>>,
    bootstrapped: bool,
}

impl Auth {
    pub fn new(enabled: bool, metrics_public: bool) -> Auth {
        Auth {
            enabled,
            metrics_public,
            table: RwLock::new(Table::default()),
            client_rate: crate::rate::RateLimiter::new(0, 0),
            writes: tokio::sync::Mutex::new(()),
            generation: Default::default(),
        }
    }

    /// With the client rate limit: `per_s` a second, `burst` at once (0:
    /// the rate).
    pub fn with_client_rate(mut self, per_s: u64, burst: u64) -> Auth {
        self.client_rate = crate::rate::RateLimiter::new(per_s, if burst == 0 { per_s } else { burst });
        self
    }

    /// The token a bearer secret names, if it is valid now.
    pub fn verify(&self, secret: &str, now_ms: u64) -> Option<Principal> {
        let hash = hash_secret(secret);
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = table.by_hash.get(&hash)?;
        record.valid_at(now_ms).then(|| Principal { record: Arc::clone(record) })
    }

    /// Every record of the table, sorted by name.
    pub fn records(&self) -> Vec<Arc<TokenRecord>> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).records.clone()
    }

    /// Whether this node has seen the cluster's bootstrap.
    pub fn bootstrapped(&self) -> bool {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).bootstrapped
    }

    /// The upsert generation, to pass to [`Auth::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the table with what the replica holds: `values` are the
    /// values of `t/…` keys (undecodable ones are skipped and counted).
    /// Nothing changes if an upsert happened since `generation` was read
    /// (the next refresh reads a replica that has it).
    pub fn replace(&self, generation: u64, bootstrapped: bool, values: Vec<Vec<u8>>) -> usize {
        let mut skipped = 0;
        let mut table = Table { bootstrapped, ..Table::default() };
        for value in values {
            match serde_json::from_slice::<TokenRecord>(&value) {
                Ok(record) => {
                    let record = Arc::new(record);
                    table.by_hash.insert(record.hash.clone(), Arc::clone(&record));
                    table.records.push(record);
                }
                Err(_) => skipped += 1,
            }
        }
        table.records.sort_by(|a, b| a.name.cmp(&b.name));
        let mut current = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation() == generation {
            *current = table;
        }
        skipped
    }

    /// Adds or replaces one record at once (the node that wrote it uses it
    /// before its next refresh).
    pub fn upsert(&self, record: TokenRecord) {
        let mut table = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.by_hash.retain(|_, r| r.name != record.name);
        table.records.retain(|r| r.name != record.name);
        let record = Arc::new(record);
        table.by_hash.insert(record.hash.clone(), Arc::clone(&record));
        let at = table.records.partition_point(|r| r.name < record.name);
        table.records.insert(at, record);
        table.bootstrapped = true;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Reads the token namespace of `node`'s replica: whether it holds the
/// bootstrap marker, and the values of at most [`TOKENS_MAX`] records.
pub fn read_replica(node: &chorus_core::Node) -> (bool, Vec<Vec<u8>>) {
    let Some(namespace) = node.namespace(TOKENS_NAMESPACE) else { return (false, Vec::new()) };
    let mut bootstrapped = node.get(TOKENS_NAMESPACE, BOOTSTRAP_KEY.as_bytes()).is_some();
    let mut values = Vec::new();
    for (_, entry) in namespace.scan(RECORD_PREFIX.as_bytes(), None, TOKENS_MAX) {
        if entry.is_tombstone() {
            continue;
        }
        if let chorus_core::ReadValue::Lww(Some(value)) = entry.read() {
            values.push(value);
        }
    }
    // Any record means a bootstrap happened, whether its marker came yet.
    bootstrapped |= !values.is_empty();
    (bootstrapped, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rules: Vec<Rule>) -> TokenRecord {
        TokenRecord {
            name: "t".into(),
            hash: hash_secret("s"),
            rules,
            admin: false,
            metrics: false,
            created_ms: 0,
            expires_ms: Some(1_000),
            revoked_ms: None,
        }
    }

    #[test]
    fn targets_parse_into_a_namespace_pattern_and_a_key_prefix() {
        assert_eq!(parse_target("app"), Ok(("app".into(), "".into())));
        assert_eq!(parse_target("app/users/"), Ok(("app".into(), "users/".into())));
        assert_eq!(parse_target("team-*/x"), Ok(("team-*".into(), "x".into())));
        assert_eq!(parse_target("*"), Ok(("*".into(), "".into())));
        assert!(parse_target("").is_err());
        assert!(parse_target("bad ns").is_err());
        assert!(parse_target("a*b").is_err());
    }

    #[test]
    fn rules_grant_only_what_they_name_where_they_name_it() {
        let rules = build_rules(&["app/users/".into()], &["app/users/".into(), "logs*".into()], &[]).unwrap();
        assert_eq!(rules.len(), 2);
        let t = record(rules);
        assert!(t.allows(Perm::Read, "app", "users/1"));
        assert!(t.allows(Perm::Write, "app", "users/1"));
        assert!(!t.allows(Perm::Read, "app", "orders/1"), "outside the key prefix");
        assert!(!t.allows(Perm::Read, "app2", "users/1"), "an exact namespace is not a prefix");
        assert!(!t.allows(Perm::Watch, "app", "users/1"), "watch was not granted");
        assert!(t.allows(Perm::Write, "logs-eu", "any"), "namespace prefix");
        assert!(!t.allows(Perm::Read, "logs-eu", "any"));
        // A scan's prefix is allowed only inside a granted key prefix.
        assert!(t.allows(Perm::Read, "app", "users/"));
        assert!(!t.allows(Perm::Read, "app", "user"));
        assert!(!t.allows(Perm::Read, "app", ""));
        assert!(t.allows_anywhere(Perm::Write) && !t.allows_anywhere(Perm::Watch));
        let admin = TokenRecord { admin: true, ..record(Vec::new()) };
        assert!(admin.allows(Perm::Watch, "anything", ""));
    }

    #[test]
    fn expiry_and_revocation_end_a_token() {
        let t = record(Vec::new());
        assert!(t.valid_at(999));
        assert!(!t.valid_at(1_000));
        assert_eq!(t.state_at(1_000), "expired");
        let revoked = TokenRecord { revoked_ms: Some(5), ..t };
        assert!(!revoked.valid_at(0));
        assert_eq!(revoked.state_at(0), "revoked");
    }

    #[test]
    fn ttls_take_seconds_minutes_hours_and_days() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_ttl("45s"), Ok(Duration::from_secs(45)));
        for bad in ["", "m", "0d", "12", "1w", "-1h", "99999999999999999d", "3650001d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_verifies_by_hash_and_refuses_unknown_expired_and_revoked_tokens() {
        let auth = Auth::new(true, false);
        let secret = new_secret();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 64);
        let good = TokenRecord { name: "good".into(), hash: hash_secret(&secret), ..record(Vec::new()) };
        let old = TokenRecord { name: "old".into(), hash: hash_secret("old"), expires_ms: Some(10), ..good.clone() };
        let gone = TokenRecord { name: "gone".into(), hash: hash_secret("gone"), revoked_ms: Some(1), ..good.clone() };
        let values = [&good, &old, &gone].into_iter().map(|r| serde_json::to_vec(r).unwrap()).chain([b"junk".to_vec()]);
        assert_eq!(auth.replace(auth.generation(), true, values.collect()), 1, "the undecodable value is skipped");
        assert_eq!(auth.verify(&secret, 500).map(|p| p.record.name.clone()), Some("good".into()));
        assert!(auth.verify("old", 500).is_none());
        assert!(auth.verify("gone", 0).is_none());
        assert!(auth.verify("chorus_unknown", 0).is_none());
        assert_eq!(auth.records().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["gone", "good", "old"]);
        auth.upsert(TokenRecord { revoked_ms: Some(2), ..good });
        assert!(auth.verify(&secret, 500).is_none(), "an upserted revocation holds at once");
        assert_eq!(auth.records().len(), 3);
        // A refresh that read the replica before that upsert changes nothing.
        auth.replace(0, false, Vec::new());
        assert_eq!(auth.records().len(), 3);
        assert!(auth.bootstrapped());
    }

    #[test]
    fn requests_without_a_token_are_keyed_by_ipv4_address_or_ipv6_slash_64() {
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(RateKey::of_addr(v4), RateKey::Addr(v4));
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(RateKey::of_addr(a), RateKey::of_addr(b), "one /64, one bucket");
        assert_ne!(RateKey::of_addr(a), RateKey::of_addr(other));
        assert_eq!(RateKey::of_addr(a), RateKey::Addr("2001:db8:1:2::".parse().unwrap()));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_token_name("ci-bot.eu_1"));
        assert!(!valid_token_name(""));
        assert!(!valid_token_name("a/b"));
        assert!(!valid_token_name(&"x".repeat(129)));
    }
}
