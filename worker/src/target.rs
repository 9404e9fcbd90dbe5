//! Which subscriber URLs hookline may call: the SSRF guard.
//!
//! A target must be `http` or `https`, and unless private targets are allowed, none of its
//! addresses may be loopback, private, link-local, unique-local, site-local, shared (CGNAT),
//! benchmarking, IETF protocol assignments, reserved, unspecified, multicast or a cloud metadata
//! address, also when an IPv6 address carries such an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4, Teredo). The
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
    let [a, b, c, _] = ip.octets();
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
        // 192.0.0.0/24 IETF protocol assignments (NAT64 and DS-Lite gateways live there).
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15 benchmarking networks, often routed to internal test gear.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4 reserved (255.255.255.255 included).
        || a >= 240
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local (includes AWS' metadata address fd00:ec2::254).
        || (first & 0xfe00) == 0xfc00
        // fe80::/10 link-local.
        || (first & 0xffc0) == 0xfe80
        // fec0::/10 site-local (deprecated, still routed inside some networks).
        || (first & 0xffc0) == 0xfec0
        // 64:ff9b:1::/48, the local-use NAT64 prefix: whatever it translates to is internal.
        || segments[..3] == [0x64, 0xff9b, 1]
        || embedded_v4(ip).is_some_and(is_forbidden_v4)
}

/// The IPv4 address an IPv6 address carries, for the forms that reach that IPv4 host:
/// `::a.b.c.d` (deprecated IPv4-compatible), the NAT64 well-known prefix `64:ff9b::/96`, 6to4
/// `2002:AABB:CCDD::/48` (bits 16..48) and Teredo `2001:0000::/32` (the client's address is the
/// last 32 bits, inverted).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let bits = ip.to_bits();
    if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // `::` and `::1` are handled as IPv6; `::0.0.0.x` is not a usable IPv4 host either.
        let v4 = Ipv4Addr::from_bits(bits as u32);
        return (!v4.is_unspecified()).then_some(v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    if segments[..2] == [0x2001, 0] {
        return Some(Ipv4Addr::from_bits(!(bits as u32)));
    }
    None
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
    check_addresses(
        &host,
        parsed.port_or_known_default().unwrap_or(443),
        allow_private,
    )
    .await?;
    Ok(parsed)
}

/// Why a host is refused by the SSRF rules, in words for the person who sent it.
const REFUSED: &str = "url points at a loopback, private, link-local or metadata address; such \
                       targets are refused unless HOOKLINE_ALLOW_PRIVATE_TARGETS is true";

/// Checks a host's addresses unless `allow_private`: a literal one directly, a name after
/// resolving it (a name that does not resolve yet is accepted; the delivery-time check still
/// applies).
async fn check_addresses(host: &url::Host, port: u16, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    match host {
        url::Host::Ipv4(ip) if is_forbidden(IpAddr::V4(*ip)) => Err(REFUSED.to_owned()),
        url::Host::Ipv6(ip) if is_forbidden(IpAddr::V6(*ip)) => Err(REFUSED.to_owned()),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(REFUSED.to_owned());
            }
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(3), lookup).await {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.iter().any(|addr| is_forbidden(addr.ip())) {
                    return Err(REFUSED.to_owned());
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a broker URL (`redis://`, `amqp://`, `nats://`, …) when a subscription is saved: one
/// of `schemes`, a host and a port, and, unless `allow_private`, addresses the SSRF rules allow.
/// Credentials are allowed (brokers need them) and never quoted in the answer.
pub async fn validate_broker_url(
    url: &str,
    schemes: &[&str],
    allow_private: bool,
) -> Result<url::Url, String> {
    // The parser's message never quotes the input.
    let parsed =
        url::Url::parse(url.trim()).map_err(|error| format!("url is not a URL: {error}"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("url must use {}", schemes.join(" or ")));
    }
    let Some(host) = parsed.host().map(|host| host.to_owned()) else {
        return Err("url has no host".to_owned());
    };
    if parsed.fragment().is_some() {
        return Err("url must not have a fragment".to_owned());
    }
    let port = parsed
        .port_or_known_default()
        .unwrap_or_else(|| default_port(parsed.scheme()));
    check_addresses(&host, port, allow_private).await?;
    Ok(parsed)
}

/// The port a broker scheme uses when its URL names none.
pub fn default_port(scheme: &str) -> u16 {
    match scheme {
        "redis" | "rediss" => 6379,
        "amqp" => 5672,
        "amqps" => 5671,
        _ => 4222,
    }
}

/// Resolves a broker URL's host at delivery time and keeps the addresses the SSRF rules allow:
/// a name re-pointed at an internal address after the subscription was saved is refused.
/// Returns the first allowed address, or why there is none (a refusal is [`ForbiddenTarget`]).
pub async fn resolve_broker(
    url: &url::Url,
    allow_private: bool,
) -> Result<SocketAddr, BrokerAddressError> {
    let port = url
        .port_or_known_default()
        .unwrap_or_else(|| default_port(url.scheme()));
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => {
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(error)) => {
                    return Err(BrokerAddressError::Unresolved(format!(
                        "could not resolve {name}: {error}"
                    )));
                }
                Err(_) => {
                    return Err(BrokerAddressError::Unresolved(format!(
                        "resolving {name} timed out"
                    )));
                }
            }
        }
        None => {
            return Err(BrokerAddressError::Forbidden(ForbiddenTarget(
                "the URL has no host".to_owned(),
            )));
        }
    };
    let host = url.host_str().unwrap_or_default();
    if !allow_private
        && matches!(url.host(), Some(url::Host::Domain(name)) if name == "localhost" || name.ends_with(".localhost"))
    {
        return Err(BrokerAddressError::Forbidden(ForbiddenTarget(format!(
            "{host} is loopback"
        ))));
    }
    addrs
        .into_iter()
        .find(|addr| allow_private || !is_forbidden(addr.ip()))
        .ok_or_else(|| {
            BrokerAddressError::Forbidden(ForbiddenTarget(format!(
                "{host} resolves to no address hookline may call"
            )))
        })
}

/// Why a broker's address cannot be used.
#[derive(Debug)]
pub enum BrokerAddressError {
    /// The SSRF rules refuse every address: no retry can succeed.
    Forbidden(ForbiddenTarget),
    /// The name did not resolve (now): a later attempt may.
    Unresolved(String),
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

    #[test]
    fn ietf_protocol_assignments_are_forbidden() {
        assert!(forbidden("192.0.0.1"));
        assert!(forbidden("192.0.0.170"));
        assert!(forbidden("192.0.0.255"));
        assert!(!forbidden("192.0.1.1"));
    }

    #[test]
    fn benchmarking_networks_are_forbidden() {
        assert!(forbidden("198.18.0.1"));
        assert!(forbidden("198.19.255.254"));
        assert!(!forbidden("198.17.255.255"));
        assert!(!forbidden("198.20.0.1"));
    }

    #[test]
    fn reserved_addresses_are_forbidden() {
        assert!(forbidden("240.0.0.1"));
        assert!(forbidden("250.1.2.3"));
        assert!(forbidden("255.255.255.254"));
        assert!(forbidden("255.255.255.255"));
        assert!(!forbidden("223.255.255.1"));
    }

    #[test]
    fn site_local_ipv6_is_forbidden() {
        assert!(forbidden("fec0::1"));
        assert!(forbidden("feff:ffff::1"));
    }

    #[test]
    fn six_to_four_addresses_are_judged_by_their_ipv4() {
        // 2002:AABB:CCDD:: embeds AA.BB.CC.DD.
        assert!(forbidden("2002:7f00:1::"), "127.0.0.1");
        assert!(forbidden("2002:a00:1:1::1"), "10.0.0.1");
        assert!(forbidden("2002:c0a8:101::"), "192.168.1.1");
        assert!(forbidden("2002:a9fe:a9fe::"), "169.254.169.254");
        assert!(!forbidden("2002:5db8:d822::1"), "93.184.216.34 is public");
    }

    #[test]
    fn teredo_addresses_are_judged_by_their_client_ipv4() {
        // The client address is the last 32 bits XOR 0xffffffff: 127.0.0.1 → 80ff:fffe.
        assert!(
            forbidden("2001:0:4136:e378:8000:63bf:80ff:fffe"),
            "127.0.0.1"
        );
        // 10.0.0.1 → f5ff:fffe.
        assert!(
            forbidden("2001:0:4136:e378:8000:63bf:f5ff:fffe"),
            "10.0.0.1"
        );
        // 192.168.1.1 → 3f57:fefe.
        assert!(forbidden("2001::3f57:fefe"), "192.168.1.1");
        // 93.184.216.34 → a247:27dd.
        assert!(
            !forbidden("2001:0:4136:e378:8000:63bf:a247:27dd"),
            "public client"
        );
    }

    #[test]
    fn the_local_use_nat64_prefix_is_forbidden() {
        assert!(forbidden("64:ff9b:1::5db8:d822"));
        assert!(forbidden("64:ff9b:1:ffff::1"));
        assert!(
            !forbidden("64:ff9b::5db8:d822"),
            "well-known prefix to a public address"
        );
        assert!(
            forbidden("64:ff9b::7f00:1"),
            "well-known prefix to loopback"
        );
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
