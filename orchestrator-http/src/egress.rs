//! Where client callbacks may go: by default only to public addresses.
//!
//! A `callbackUrl` is chosen by whoever creates a call. Without a guard, an
//! API client could make the server POST to `http://169.254.169.254/` (a
//! cloud metadata service), to a database admin port on `10.0.0.5`, or to
//! `localhost`: a server-side request forgery. [`PublicOnly`] resolves the
//! host itself and keeps only globally routable addresses, and the client
//! connects to exactly the addresses it kept, so a DNS answer cannot change
//! between the check and the connection. URLs with an IP literal host are
//! checked by [`is_public_url`] before the request. Receivers on a private
//! network are allowed with `CALLBACK_ALLOW_PRIVATE_NETWORKS=true`.
//!
//! The ranges refused are IANA's special-purpose registries (RFC 6890 and
//! its updates): loopback, private-use (RFC 1918), shared address space
//! (RFC 6598), link-local, unique-local (RFC 4193), documentation,
//! benchmarking, multicast, reserved and unspecified; an IPv4-mapped IPv6
//! address is judged as its IPv4 address.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses callbacks may be sent to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Targets {
    /// Only public addresses (the default).
    #[default]
    PublicOnly,
    /// Any address, private networks and this machine included
    /// (`CALLBACK_ALLOW_PRIVATE_NETWORKS=true`).
    Any,
}

/// The reason recorded for a try refused because its target is not public.
pub const BLOCKED: &str = "blocked: not a public address";

/// Why a callback target was refused.
#[derive(Debug)]
pub struct NotPublic {
    host: String,
}

impl fmt::Display for NotPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} has no public address", self.host)
    }
}

impl Error for NotPublic {}

/// A resolver for reqwest that keeps only public addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = resolved.filter(|addr| is_public(addr.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic { host }) as Box<dyn Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Whether `url`'s host, when it is an IP literal, is public; a host name
/// passes here (the resolver judges its addresses).
#[must_use]
pub fn is_public_url(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

/// Whether `error` (or one of its causes) is a refusal by [`PublicOnly`].
#[must_use]
pub fn refused(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<NotPublic>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether `ip` is globally routable (see the module docs for the ranges).
#[must_use]
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_public_v4(mapped),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network", RFC 791
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, RFC 6890
        || (a == 198 && (18..20).contains(&b)) // benchmarking, RFC 2544
        || a >= 240) // reserved, RFC 1112
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (first & 0xffc0) == 0xfe80 // link-local, RFC 4291
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation, RFC 3849
        || first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1)
    // local NAT64, RFC 8215
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn ip_literal_urls_are_judged_and_host_names_left_to_the_resolver() {
        let url = |raw: &str| reqwest::Url::parse(raw).unwrap();
        assert!(!is_public_url(&url("http://127.0.0.1:8080/hook")));
        assert!(!is_public_url(&url("http://[::1]/hook")));
        assert!(!is_public_url(&url("http://169.254.169.254/latest")));
        assert!(is_public_url(&url("https://8.8.8.8/hook")));
        assert!(is_public_url(&url("https://hooks.example.com/x")));
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_without_a_public_address() {
        let error = PublicOnly
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is not public");
        assert!(refused(&*error));
    }
}
