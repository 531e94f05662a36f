//! Which network addresses a response webhook may reach: the classification of an address, and the
//! operator's allow list (`--webhook-allowed-hosts`).
//!
//! - **never**: link-local (169.254.0.0/16, where cloud metadata services answer, and fe80::/10), AWS's IPv6
//!   metadata address fd00:ec2::254, unspecified (0.0.0.0/8, ::), multicast, broadcast and the reserved
//!   240.0.0.0/4, whatever the allow list says;
//! - **only when listed**: loopback (127.0.0.0/8, ::1), private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
//!   fc00::/7, the deprecated fec0::/10) and shared CGNAT space (100.64.0.0/10) — reachable when the address
//!   is in a listed network, or the webhook's host name is listed (the mesh case: `hooks.internal`);
//! - everything else is public and allowed.
//!
//! An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is
//! classified by the IPv4 address, which is where it leads. Nothing here resolves names: the delivery layer
//! checks every address a name resolves to, at connect time.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use thiserror::Error;

/// AWS's instance metadata service on IPv6 (inside fc00::/7, so it needs its own rule).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);
/// The well-known NAT64 prefix (RFC 6052): `64:ff9b::/96` followed by an IPv4 address.
const NAT64_PREFIX: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];

/// Where an address belongs, for the webhook's purposes; the text is what messages call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Allowed.
    Public,
    /// Allowed only when listed: loopback, private, shared (CGNAT).
    Internal(&'static str),
    /// Never allowed: link-local, cloud metadata, unspecified, multicast, broadcast, reserved.
    Forbidden(&'static str),
}

/// The class of `ip`; see the module documentation for the ranges.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [first, second, ..] = ip.octets();
    if ip.is_link_local() {
        AddressClass::Forbidden("link-local (cloud metadata)")
    } else if first == 0 {
        AddressClass::Forbidden("unspecified")
    } else if ip.is_broadcast() {
        AddressClass::Forbidden("broadcast")
    } else if ip.is_multicast() {
        AddressClass::Forbidden("multicast")
    } else if first >= 240 {
        AddressClass::Forbidden("reserved")
    } else if ip.is_loopback() {
        AddressClass::Internal("loopback")
    } else if ip.is_private() {
        AddressClass::Internal("private")
    } else if first == 100 && second & 0xc0 == 64 {
        AddressClass::Internal("shared (cgnat)")
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip == AWS_METADATA_V6 {
        AddressClass::Forbidden("cloud metadata")
    } else if ip.is_unspecified() {
        AddressClass::Forbidden("unspecified")
    } else if ip.is_multicast() {
        AddressClass::Forbidden("multicast")
    } else if ip.is_unicast_link_local() {
        AddressClass::Forbidden("link-local")
    } else if ip.is_loopback() {
        AddressClass::Internal("loopback")
    } else if ip.is_unique_local() || first & 0xffc0 == 0xfec0 {
        AddressClass::Internal("private")
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address an IPv4-mapped or NAT64 IPv6 address leads to.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = ip.segments();
    (segments[..6] == NAT64_PREFIX).then(|| {
        let [.., high, low] = segments;
        Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
    })
}

/// The address as the network stack will use it: an IPv4-mapped IPv6 address as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One entry of `--webhook-allowed-hosts`: a network (`10.0.0.0/8`; a bare address is a one-address
/// network) or a host name (`hooks.internal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHost {
    Network(IpNet),
    /// Lowercase, without a trailing dot.
    Name(String),
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedHost::Network(network) => network.fmt(f),
            AllowedHost::Name(name) => f.write_str(name),
        }
    }
}

/// Why an entry of the allow list is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AllowedHostError {
    #[error("an entry is empty")]
    Empty,
    #[error("{entry:?} is not a network in cidr notation (like 10.0.0.0/8)")]
    BadNetwork { entry: String },
    #[error("{entry:?} is neither an ip address, a cidr network nor a host name")]
    BadName { entry: String },
    #[error("{entry} is {kind}, which is never allowed; listing it has no effect")]
    NeverAllowed { entry: String, kind: &'static str },
}

impl FromStr for AllowedHost {
    type Err = AllowedHostError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let entry = text.trim();
        if entry.is_empty() {
            return Err(AllowedHostError::Empty);
        }
        let network = if entry.contains('/') {
            IpNet::from_str(entry).map_err(|_| AllowedHostError::BadNetwork {
                entry: entry.to_string(),
            })?
        } else if let Some(ip) = parse_ip(entry) {
            IpNet::from(ip)
        } else {
            return host_name(entry).map(AllowedHost::Name);
        };
        // Both ends in the same never-allowed range: the whole network is in it (the ranges are networks).
        if let (AddressClass::Forbidden(first), AddressClass::Forbidden(last)) =
            (classify(network.network()), classify(network.broadcast()))
        {
            if first == last {
                return Err(AllowedHostError::NeverAllowed {
                    entry: entry.to_string(),
                    kind: first,
                });
            }
        }
        Ok(AllowedHost::Network(network))
    }
}

/// An IP address, IPv6 with or without brackets.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// `text` as a comparable host name: ASCII letters, digits, hyphens and dots, lowercase, no trailing dot.
fn host_name(text: &str) -> Result<String, AllowedHostError> {
    let name = normalize_name(text);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
    if valid {
        Ok(name)
    } else {
        Err(AllowedHostError::BadName {
            entry: text.to_string(),
        })
    }
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// An address the policy does not let a webhook reach.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AddressRefused {
    #[error("{ip} is {kind}, which a response webhook may never reach")]
    Never { ip: IpAddr, kind: &'static str },
    #[error(
        "{ip} is {kind}; list it or the webhook's host name in --webhook-allowed-hosts to allow it"
    )]
    NotListed { ip: IpAddr, kind: &'static str },
}

/// The allow list: public addresses pass, internal ones when listed, never-allowed ones never.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPolicy {
    networks: Vec<IpNet>,
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(entries: &[AllowedHost]) -> Self {
        let mut policy = HostPolicy::default();
        for entry in entries {
            match entry {
                AllowedHost::Network(network) => policy.networks.push(*network),
                AllowedHost::Name(name) => policy.names.push(normalize_name(name)),
            }
        }
        policy
    }

    /// Whether a webhook may connect to `ip`, reached through the host name `name` (`None` for a URL with an
    /// IP address as its host).
    pub fn check(&self, name: Option<&str>, ip: IpAddr) -> Result<(), AddressRefused> {
        match classify(ip) {
            AddressClass::Public => Ok(()),
            AddressClass::Forbidden(kind) => Err(AddressRefused::Never { ip, kind }),
            AddressClass::Internal(_) if self.lists(name, ip) => Ok(()),
            AddressClass::Internal(kind) => Err(AddressRefused::NotListed { ip, kind }),
        }
    }

    fn lists(&self, name: Option<&str>, ip: IpAddr) -> bool {
        let canonical = canonical(ip);
        self.networks
            .iter()
            .any(|network| network.contains(&ip) || network.contains(&canonical))
            || name.is_some_and(|name| {
                let name = normalize_name(name);
                self.names.contains(&name)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn policy(entries: &[&str]) -> HostPolicy {
        let parsed: Vec<AllowedHost> = entries.iter().map(|entry| entry.parse().unwrap()).collect();
        HostPolicy::new(&parsed)
    }

    #[test]
    fn ipv4_classes() {
        use AddressClass::*;
        for (address, class) in [
            ("169.254.169.254", Forbidden("link-local (cloud metadata)")),
            ("169.254.0.1", Forbidden("link-local (cloud metadata)")),
            ("0.0.0.0", Forbidden("unspecified")),
            ("0.1.2.3", Forbidden("unspecified")),
            ("224.0.0.1", Forbidden("multicast")),
            ("239.255.255.250", Forbidden("multicast")),
            ("255.255.255.255", Forbidden("broadcast")),
            ("240.0.0.1", Forbidden("reserved")),
            ("127.0.0.1", Internal("loopback")),
            ("127.255.0.9", Internal("loopback")),
            ("10.1.2.3", Internal("private")),
            ("172.16.0.1", Internal("private")),
            ("172.31.255.255", Internal("private")),
            ("192.168.1.1", Internal("private")),
            ("100.64.0.1", Internal("shared (cgnat)")),
            ("100.127.255.255", Internal("shared (cgnat)")),
            ("100.100.100.200", Internal("shared (cgnat)")),
            ("100.128.0.1", Public),
            ("172.32.0.1", Public),
            ("169.253.255.255", Public),
            ("8.8.8.8", Public),
            ("93.184.216.34", Public),
        ] {
            assert_eq!(classify(ip(address)), class, "{address}");
        }
    }

    #[test]
    fn ipv6_classes_and_embedded_ipv4() {
        use AddressClass::*;
        for (address, class) in [
            ("fd00:ec2::254", Forbidden("cloud metadata")),
            ("fe80::1", Forbidden("link-local")),
            ("febf::1", Forbidden("link-local")),
            ("::", Forbidden("unspecified")),
            ("ff02::1", Forbidden("multicast")),
            ("::1", Internal("loopback")),
            ("fd00::1", Internal("private")),
            ("fc00::1", Internal("private")),
            ("fec0::1", Internal("private")),
            ("2001:4860:4860::8888", Public),
            // Mapped and NAT64 addresses lead to their IPv4 address.
            (
                "::ffff:169.254.169.254",
                Forbidden("link-local (cloud metadata)"),
            ),
            ("::ffff:127.0.0.1", Internal("loopback")),
            ("::ffff:10.0.0.1", Internal("private")),
            ("::ffff:8.8.8.8", Public),
            (
                "64:ff9b::a9fe:a9fe",
                Forbidden("link-local (cloud metadata)"),
            ),
            ("64:ff9b::7f00:1", Internal("loopback")),
            ("64:ff9b::808:808", Public),
        ] {
            assert_eq!(classify(ip(address)), class, "{address}");
        }
    }

    #[test]
    fn internal_addresses_need_a_listed_network_or_name() {
        let empty = HostPolicy::default();
        assert_eq!(
            empty.check(Some("example.com"), ip("93.184.216.34")),
            Ok(())
        );
        for address in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "100.64.1.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                matches!(
                    empty.check(None, ip(address)),
                    Err(AddressRefused::NotListed { .. })
                ),
                "{address}"
            );
        }

        let listed = policy(&["127.0.0.1/32", "10.0.0.0/8", "fd12::/16", "hooks.internal"]);
        assert_eq!(listed.check(None, ip("127.0.0.1")), Ok(()));
        assert_eq!(listed.check(None, ip("::ffff:127.0.0.1")), Ok(()), "mapped");
        assert!(listed.check(None, ip("127.0.0.2")).is_err());
        assert!(
            listed.check(None, ip("::1")).is_err(),
            "::1 is not 127.0.0.1"
        );
        assert_eq!(listed.check(None, ip("10.200.0.7")), Ok(()));
        assert!(listed.check(None, ip("192.168.0.1")).is_err());
        assert_eq!(listed.check(None, ip("fd12:3::1")), Ok(()));
        // A listed name allows whatever it resolves to, names compared without case or trailing dot.
        assert_eq!(
            listed.check(Some("hooks.internal"), ip("192.168.0.1")),
            Ok(())
        );
        assert_eq!(listed.check(Some("HOOKS.Internal."), ip("::1")), Ok(()));
        assert!(listed
            .check(Some("other.internal"), ip("192.168.0.1"))
            .is_err());
        let refused = empty.check(Some("localhost"), ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "127.0.0.1 is loopback; list it or the webhook's host name in --webhook-allowed-hosts to allow it"
        );
    }

    #[test]
    fn never_allowed_addresses_stay_refused_whatever_is_listed() {
        let everything = policy(&["0.0.0.0/0", "::/0", "metadata.google.internal"]);
        for address in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(
                matches!(
                    everything.check(Some("metadata.google.internal"), ip(address)),
                    Err(AddressRefused::Never { .. })
                ),
                "{address}"
            );
        }
        // Listing everything lets internal addresses through, of course.
        assert_eq!(everything.check(None, ip("127.0.0.1")), Ok(()));
        assert_eq!(everything.check(None, ip("fd00:ec2::253")), Ok(()));
    }

    #[test]
    fn allow_list_entries() {
        let parse = |text: &str| text.parse::<AllowedHost>();
        assert_eq!(
            parse("10.0.0.0/8"),
            Ok(AllowedHost::Network("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            parse(" 127.0.0.1 "),
            Ok(AllowedHost::Network("127.0.0.1/32".parse().unwrap()))
        );
        assert_eq!(
            parse("[::1]"),
            Ok(AllowedHost::Network("::1/128".parse().unwrap()))
        );
        assert_eq!(
            parse("Hooks.Internal."),
            Ok(AllowedHost::Name("hooks.internal".into()))
        );
        assert_eq!(
            parse("localhost"),
            Ok(AllowedHost::Name("localhost".into()))
        );
        assert_eq!(parse(""), Err(AllowedHostError::Empty));
        assert!(matches!(
            parse("10.0.0.0/33"),
            Err(AllowedHostError::BadNetwork { .. })
        ));
        assert!(parse("http://hooks").is_err());
        for bad in ["*.internal", "hooks internal", "a..b", "hooks:80"] {
            assert!(
                matches!(parse(bad), Err(AllowedHostError::BadName { .. })),
                "{bad}"
            );
        }
        for never in [
            "169.254.169.254",
            "169.254.0.0/16",
            "fd00:ec2::254",
            "fe80::/10",
        ] {
            let error = parse(never).unwrap_err();
            assert!(
                matches!(error, AllowedHostError::NeverAllowed { .. }),
                "{never}: {error}"
            );
        }
        assert_eq!(
            parse("169.254.169.254/32").unwrap_err().to_string(),
            "169.254.169.254/32 is link-local (cloud metadata), which is never allowed; listing it has no effect"
        );
        // A wide network that merely includes never-allowed ranges is fine: they stay refused.
        assert!(parse("0.0.0.0/0").is_ok());
        assert!(parse("::/0").is_ok());
    }
}
