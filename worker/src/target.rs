//! Which subscriber URLs hookline may call: the SSRF guard.
//!
//! A target must be `http` or `https`, and unless private targets are allowed, none of its
//! addresses may be loopback, private, link-local, unique-local, shared (CGNAT), unspecified,
//! multicast or a cloud metadata address, also when written as an IPv4-mapped IPv6 address. The
//! URL is checked when a subscription is saved, and every address is checked again after DNS
//! resolution at delivery time (in [`GuardedResolver`]), so a name re-pointed at an internal
//! address later is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A target refused by the SSRF guard; a delivery to it fails permanently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenTarget(pub String);

impl std::fmt::Display for ForbiddenTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target refused: {}", self.0)
    }
}

impl std::error::Error for ForbiddenTarget {}

/// Whether `ip` is an address subscribers may not point hookline at.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        // Includes the cloud metadata address 169.254.169.254.
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 ("this network") and 100.64.0.0/10 (shared address space, CGNAT).
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local (includes AWS' metadata address fd00:ec2::254).
        || (first & 0xfe00) == 0xfc00
        // fe80::/10 link-local.
        || (first & 0xffc0) == 0xfe80
        // ::a.b.c.d (deprecated IPv4-compatible) and the NAT64 prefix carry IPv4 addresses.
        || ip.to_ipv4().is_some_and(|v4| !v4.is_unspecified() && is_forbidden_v4(v4))
        || (ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            && is_forbidden_v4(Ipv4Addr::from_bits(ip.to_bits() as u32)))
}

/// Checks a subscriber URL's form and, unless `allow_private`, its addresses: literal ones
/// directly, names after resolving them (a name that does not resolve yet is accepted; the
/// delivery-time check still applies). Returns why the URL is refused.
pub async fn validate_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("url is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("url must use http or https".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not contain credentials".to_owned());
    }
    let host = match parsed.host() {
        Some(host) => host.to_owned(),
        None => return Err("url has no host".to_owned()),
    };
    if allow_private {
        return Ok(parsed);
    }
    let refused = || {
        Err(
            "url points at a loopback, private, link-local or metadata address; such targets \
             are refused unless HOOKLINE_ALLOW_PRIVATE_TARGETS is true"
                .to_owned(),
        )
    };
    match host {
        url::Host::Ipv4(ip) if is_forbidden(IpAddr::V4(ip)) => return refused(),
        url::Host::Ipv6(ip) if is_forbidden(IpAddr::V6(ip)) => return refused(),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return refused();
            }
            let port = parsed.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(3), lookup).await {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.iter().any(|addr| is_forbidden(addr.ip())) {
                    return refused();
                }
            }
        }
        _ => {}
    }
    Ok(parsed)
}

/// A DNS resolver for the delivery client that drops forbidden addresses, and fails with
/// [`ForbiddenTarget`] when none is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Let every address through.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allow_private || !is_forbidden(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(ForbiddenTarget(format!(
                    "{host} resolves to no address hookline may call"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks the host of a URL written as an IP literal (the resolver is not asked for those).
pub fn check_literal_host(url: &reqwest::Url, allow_private: bool) -> Result<(), ForbiddenTarget> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ForbiddenTarget(format!(
            "scheme {} is not http(s)",
            url.scheme()
        )));
    }
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(ForbiddenTarget(format!("{name} is loopback")));
            }
            return Ok(());
        }
        None => return Err(ForbiddenTarget("the URL has no host".to_owned())),
    };
    if is_forbidden(ip) {
        return Err(ForbiddenTarget(format!("{ip} is not a public address")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(ip: &str) -> bool {
        is_forbidden(ip.parse().expect("an address"))
    }

    #[test]
    fn internal_addresses_are_forbidden_and_public_ones_are_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "1.1.1.1",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_and_address() {
        assert!(validate_url("ftp://example.com/", false).await.is_err());
        assert!(
            validate_url("http://127.0.0.1:8080/hook", false)
                .await
                .is_err()
        );
        assert!(
            validate_url("http://[::ffff:7f00:1]/", false)
                .await
                .is_err()
        );
        assert!(validate_url("http://localhost/", false).await.is_err());
        assert!(
            validate_url("http://169.254.169.254/latest", false)
                .await
                .is_err()
        );
        assert!(
            validate_url("http://127.0.0.1:8080/hook", true)
                .await
                .is_ok()
        );
        assert!(
            validate_url("https://93.184.216.34/hook", false)
                .await
                .is_ok()
        );
    }
}
