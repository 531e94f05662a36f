//! The response webhook's address policy ([`HostPolicy`]) where it counts, at connect time: a DNS resolver for
//! the webhook client that hands the connector only the addresses the policy allows. So a name that resolves
//! to a cloud-metadata or loopback address is caught after resolution, and a name that resolves differently
//! from one call to the next (DNS rebinding) is checked on the very addresses connected to. A URL whose host
//! is an IP address never reaches a resolver: [`literal_address`] gives it to the caller to check first.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use thiserror::Error;
use url::{Host, Url};

use crate::domain::host_policy::{AddressRefused, HostPolicy};

/// A webhook host none of whose addresses the policy allows.
#[derive(Debug, Error)]
#[error("webhook host {host}: {reason}")]
pub(crate) struct HostRefused {
    pub host: String,
    pub reason: AddressRefused,
}

/// Resolves names with the system resolver (as reqwest does by default) and drops the addresses the policy
/// refuses.
pub(crate) struct PolicyResolver {
    policy: Arc<HostPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<HostPolicy>) -> Self {
        PolicyResolver { policy }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addresses(&policy, &host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `host` that `policy` allows, in the resolver's order; an error naming the first refused
/// address when there are addresses but none is allowed.
pub(crate) fn allowed_addresses(
    policy: &HostPolicy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, HostRefused> {
    let mut first_refusal = None;
    let mut allowed = Vec::with_capacity(resolved.len());
    for address in resolved {
        match policy.check(Some(host), address.ip()) {
            Ok(()) => allowed.push(address),
            Err(reason) => {
                first_refusal.get_or_insert(reason);
            }
        }
    }
    match first_refusal {
        Some(reason) if allowed.is_empty() => Err(HostRefused {
            host: host.to_string(),
            reason,
        }),
        _ => Ok(allowed),
    }
}

/// The IP address a URL names as its host, if it names one rather than a host name.
pub(crate) fn literal_address(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    }
}

/// The policy refusal somewhere in the causes of a failed webhook call, if that is why it failed.
pub(crate) fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a HostRefused> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<HostRefused>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::host_policy::AllowedHost;

    fn addresses(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
            .collect()
    }

    fn policy(entries: &[&str]) -> HostPolicy {
        let parsed: Vec<AllowedHost> = entries.iter().map(|entry| entry.parse().unwrap()).collect();
        HostPolicy::new(&parsed)
    }

    #[test]
    fn refused_addresses_are_dropped_and_a_name_with_none_left_is_refused() {
        let open = policy(&["0.0.0.0/0", "::/0"]);
        // A name that also resolves to the metadata address connects only to the rest.
        assert_eq!(
            allowed_addresses(
                &open,
                "hooks.example",
                addresses(&["169.254.169.254", "10.0.0.7", "fd00:ec2::254"])
            )
            .unwrap(),
            addresses(&["10.0.0.7"])
        );
        let refused = allowed_addresses(
            &open,
            "metadata.example",
            addresses(&["169.254.169.254", "::ffff:169.254.169.254"]),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "webhook host metadata.example: 169.254.169.254 is link-local (cloud metadata), which a response webhook may never reach"
        );

        let default = HostPolicy::default();
        let refused =
            allowed_addresses(&default, "localhost", addresses(&["::1", "127.0.0.1"])).unwrap_err();
        assert!(
            matches!(refused.reason, AddressRefused::NotListed { .. }),
            "{refused}"
        );
        assert_eq!(
            allowed_addresses(&default, "hooks.example", addresses(&["93.184.216.34"])).unwrap(),
            addresses(&["93.184.216.34"])
        );
        // Listed by name: whatever it resolves to, except never-allowed addresses.
        let by_name = policy(&["hooks.internal"]);
        assert_eq!(
            allowed_addresses(
                &by_name,
                "hooks.internal",
                addresses(&["10.1.2.3", "169.254.1.1"])
            )
            .unwrap(),
            addresses(&["10.1.2.3"])
        );
        // Nothing resolved is left to the connector to report.
        assert!(allowed_addresses(&default, "nowhere.example", Vec::new())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn literal_addresses_are_found_in_urls() {
        let literal = |url: &str| literal_address(&Url::parse(url).unwrap());
        assert_eq!(
            literal("http://169.254.169.254/x"),
            Some("169.254.169.254".parse().unwrap())
        );
        assert_eq!(
            literal("http://[::ffff:127.0.0.1]:8080/"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        // The url crate normalises other spellings of an IPv4 address.
        assert_eq!(
            literal("http://2130706433/"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            literal("http://0x7f.1/"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(literal("https://hooks.example/"), None);
    }
}
