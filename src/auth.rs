//! Access control: an optional client address allow-list and optional bearer tokens, compared
//! in constant time.

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

/// Checks one request against the access settings.
pub fn check(access: &Access, client: IpAddr, headers: &HeaderMap) -> Result<(), Denied> {
    let client = client.to_canonical();
    if !access.allowed.is_empty() && !access.allowed.iter().any(|net| net.contains(&client)) {
        return Err(Denied::Forbidden);
    }
    if access.tokens.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or("");
    // Every token is compared, so the time taken does not say which one nearly matched.
    let matched = access.tokens.iter().fold(subtle::Choice::from(0), |acc, token| {
        acc | token.as_bytes().ct_eq(presented.as_bytes())
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Denied::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn tokens_and_networks() {
        let access = Access {
            tokens: vec!["a-very-long-token-1".into(), "a-very-long-token-2".into()],
            allowed: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(check(&access, inside, &headers("Bearer a-very-long-token-2")), Ok(()));
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
        assert_eq!(check(&access, mapped, &headers("Bearer a-very-long-token-1")), Ok(()));
        assert_eq!(check(&Access::default(), outside, &HeaderMap::new()), Ok(()));
    }
}
