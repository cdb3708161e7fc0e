//! Security inputs from outside a node (`docs/design/security.md`): token
//! records arrive from other members by replication (JSON in the
//! `_chorus.tokens` namespace), token specs from HTTP clients (`NS[/PREFIX]`
//! rules, `--ttl` durations), and signed revocation lists from files an
//! operator copies. The first byte picks the decoder. None may panic; a
//! record that decodes survives a JSON round trip and a table rebuilt from
//! it finds it by its hash; a rule that parses has a valid namespace
//! pattern; a ttl that parses is within its bounds; a revocation list the
//! fuzzer made never verifies against a CA whose key it does not hold.

#![no_main]

use chorus_daemon::auth::{self, Auth, TTL_MAX, TokenRecord};
use chorus_net::{ClusterCa, SignedRevocations, verify_revocations};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn ca_pem() -> &'static str {
    static CA: OnceLock<String> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("fuzz").map(|ca| ca.cert_pem().to_string()).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            // A table rebuilt from replica values, one per NUL-separated part.
            let values: Vec<Vec<u8>> = rest.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
            let table = Auth::new(true, false);
            let decoded: Vec<TokenRecord> = values.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect();
            let skipped = table.replace(table.generation(), false, values);
            assert_eq!(table.records().len() + skipped, rest.split(|b| *b == 0).count());
            for record in decoded {
                let again: TokenRecord =
                    serde_json::from_slice(&serde_json::to_vec(&record).expect("encode")).expect("round trip");
                assert_eq!(again, record, "a decoded record round-trips");
                let _ = record.allows(auth::Perm::Read, "ns", "key");
                let _ = record.state_at(u64::MAX);
            }
            let _ = table.verify(std::str::from_utf8(rest).unwrap_or(""), 0);
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let specs: Vec<String> = text.split('\n').map(str::to_string).collect();
            if let Ok(rules) = auth::build_rules(&specs, &specs, &specs) {
                assert!(rules.len() <= auth::RULES_PER_TOKEN_MAX);
                for rule in &rules {
                    let bare = rule.ns.strip_suffix('*').unwrap_or(&rule.ns);
                    assert!(!bare.contains('*'), "a namespace pattern with an inner star was accepted");
                }
            }
            for spec in &specs {
                if let Ok(ttl) = auth::parse_ttl(spec) {
                    assert!(!ttl.is_zero() && ttl <= TTL_MAX, "ttl {ttl:?} out of bounds accepted");
                }
                let _ = auth::valid_token_name(spec);
            }
        }
        _ => {
            if let Ok(signed) = serde_json::from_slice::<SignedRevocations>(rest) {
                assert!(verify_revocations(ca_pem(), &signed).is_err(), "a list the fuzzer made verified");
            }
        }
    }
});
