//! Access control: an optional client address allow-list and optional bearer tokens, compared
//! in constant time. A token stands for an identity ([`Caller`]) that owns the runs it starts.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::config::Access;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The client's address is not allowed (403).
    Forbidden,
    /// No valid bearer token (401).
    Unauthorized,
}

/// Who is calling. Runs record their starter's `name`; a caller sees a run when it started it,
/// when it holds an admin token, or when no tokens are configured at all (then nobody is told
/// apart and every caller sees every run, as before tokens existed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The token's name (never the token); `None` when no tokens are configured.
    pub name: Option<String>,
    /// Holds an `ADMIN_TOKENS` token, or no tokens are configured.
    pub admin: bool,
    /// Where the request came from (for the `run finished` log line).
    pub client: Option<std::net::SocketAddr>,
    /// Forwarded by another replica on the caller's behalf (`crate::api::forward`): answered
    /// here, never forwarded again.
    pub via_replica: bool,
}

impl Caller {
    /// The caller when access control has no tokens: sees everything.
    pub fn open() -> Caller {
        Caller {
            name: None,
            admin: true,
            client: None,
            via_replica: false,
        }
    }

    /// Whether this caller may see (and stop) a run started by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || (self.name.is_some() && self.name.as_deref() == owner)
    }
}

/// The credentials of an `Authorization` header: the scheme is matched without regard to case
/// (RFC 9110 §11.1), the token exactly.
fn bearer(headers: &HeaderMap) -> &str {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return "";
    };
    let value = value.trim_start();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    }
}

/// Checks one request against the access settings and says who is calling.
pub fn check(access: &Access, client: IpAddr, headers: &HeaderMap) -> Result<Caller, Denied> {
    let client = client.to_canonical();
    if !access.allowed.is_empty() && !access.allowed.iter().any(|net| net.contains(&client)) {
        return Err(Denied::Forbidden);
    }
    if access.tokens.is_empty() {
        return Ok(Caller::open());
    }
    let presented = bearer(headers).as_bytes();
    // Every token is compared, so the time taken does not say which one nearly matched.
    let mut found: Option<usize> = None;
    for (i, token) in access.tokens.iter().enumerate() {
        if bool::from(token.secret.as_bytes().ct_eq(presented)) && found.is_none() {
            found = Some(i);
        }
    }
    match found {
        Some(i) => Ok(Caller {
            name: Some(access.tokens[i].name.clone()),
            admin: access.tokens[i].admin,
            client: None,
            via_replica: false,
        }),
        None => Err(Denied::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    fn token(name: &str, secret: &str, admin: bool) -> Token {
        Token {
            name: name.into(),
            secret: secret.into(),
            admin,
        }
    }

    #[test]
    fn tokens_and_networks() {
        let access = Access {
            tokens: vec![
                token("one", "a-very-long-token-1", false),
                token("two", "a-very-long-token-2", false),
                token("ops", "a-very-long-token-9", true),
            ],
            allowed: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let two = check(&access, inside, &headers("Bearer a-very-long-token-2")).unwrap();
        assert_eq!(two.name.as_deref(), Some("two"));
        assert!(!two.admin);
        assert!(
            check(&access, inside, &headers("Bearer a-very-long-token-9"))
                .unwrap()
                .admin
        );
        assert_eq!(
            check(&access, inside, &headers("Bearer a-very-long-token-3")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            check(&access, inside, &headers("Basic a-very-long-token-1")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(check(&access, inside, &HeaderMap::new()), Err(Denied::Unauthorized));
        let outside: IpAddr = "192.168.1.1".parse().unwrap();
        assert_eq!(
            check(&access, outside, &headers("Bearer a-very-long-token-1")),
            Err(Denied::Forbidden)
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(check(&access, mapped, &headers("Bearer a-very-long-token-1")).is_ok());
        assert_eq!(
            check(&Access::default(), outside, &HeaderMap::new()),
            Ok(Caller::open())
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let access = Access {
            tokens: vec![token("one", "a-very-long-token-1", false)],
            allowed: vec![],
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for h in [
            "Bearer a-very-long-token-1",
            "bearer a-very-long-token-1",
            "BEARER a-very-long-token-1",
            "bEaReR   a-very-long-token-1 ",
        ] {
            assert!(check(&access, ip, &headers(h)).is_ok(), "{h}");
        }
        for h in ["Bearer", "Bearera-very-long-token-1", "Bearer A-VERY-LONG-TOKEN-1"] {
            assert_eq!(check(&access, ip, &headers(h)), Err(Denied::Unauthorized), "{h}");
        }
    }

    #[test]
    fn runs_are_seen_by_their_owner_and_admins_only() {
        let alice = Caller {
            name: Some("alice".into()),
            admin: false,
            client: None,
            via_replica: false,
        };
        assert!(alice.may_see(Some("alice")));
        assert!(!alice.may_see(Some("bob")));
        assert!(!alice.may_see(None));
        let ops = Caller {
            name: Some("ops".into()),
            admin: true,
            client: None,
            via_replica: false,
        };
        assert!(ops.may_see(Some("bob")) && ops.may_see(None));
        assert!(Caller::open().may_see(Some("x")));
    }
}
