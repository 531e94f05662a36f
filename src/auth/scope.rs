//! What a caller may do: three scopes, and which one each RPC needs.

use std::fmt;

/// A permission a caller holds. `admin` includes `read`: whoever may change a destination may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Credential and destination writes, activation, pausing, test sends.
    Admin,
    /// Gets, lists, templates, previews.
    Read,
    /// SendRecords, failed records and their retry.
    Send,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Admin, Scope::Read, Scope::Send];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Read => "read",
            Scope::Send => "send",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Admin => 1,
            Scope::Read => 2,
            Scope::Send => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The scopes one caller holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn grants(self, needed: Scope) -> bool {
        let held = if self.0 & Scope::Admin.bit() != 0 {
            self.0 | Scope::Read.bit()
        } else {
            self.0
        };
        held & needed.bit() != 0
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Scopes(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }
}

/// What a call to one gRPC method needs before it reaches its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, so probes and load balancers work without a token.
    Public,
    /// Server reflection: any known caller, or anyone with `--public-reflection`.
    Reflection,
    /// A caller holding the scope. Per-destination limits are checked by the service, which knows the
    /// destination.
    Scoped(Scope),
    /// `admin` over every destination: credentials are shared by destinations, so a caller limited to some
    /// destinations must not change the keys others use.
    UnrestrictedAdmin,
}

const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];
const CREDENTIALS: &str = "/groove.destination.v1.CredentialService/";
const DESTINATIONS: &str = "/groove.destination.v1.DestinationService/";
const DELIVERY: &str = "/groove.destination.v1.DeliveryService/";

/// The access a gRPC request path (`/package.Service/Method`) needs. Anything not listed needs an
/// unrestricted admin, so a method added to the contract is closed until it is listed here.
pub fn access_for(path: &str) -> Access {
    if path.starts_with(HEALTH) {
        return Access::Public;
    }
    if REFLECTION.iter().any(|prefix| path.starts_with(prefix)) {
        return Access::Reflection;
    }
    let scoped = |method: &str, table: &[(&str, Access)]| {
        table
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, access)| *access)
    };
    let listed = if let Some(method) = path.strip_prefix(CREDENTIALS) {
        scoped(method, CREDENTIAL_METHODS)
    } else if let Some(method) = path.strip_prefix(DESTINATIONS) {
        scoped(method, DESTINATION_METHODS)
    } else if let Some(method) = path.strip_prefix(DELIVERY) {
        scoped(method, DELIVERY_METHODS)
    } else {
        None
    };
    listed.unwrap_or(Access::UnrestrictedAdmin)
}

const CREDENTIAL_METHODS: &[(&str, Access)] = &[
    ("CreateCredential", Access::UnrestrictedAdmin),
    ("GetCredential", Access::Scoped(Scope::Read)),
    ("ListCredentials", Access::Scoped(Scope::Read)),
    ("UpdateCredential", Access::UnrestrictedAdmin),
    ("DeleteCredential", Access::UnrestrictedAdmin),
    // It spends a call of the key's rate limit on Groove.
    ("VerifyCredential", Access::UnrestrictedAdmin),
];

const DESTINATION_METHODS: &[(&str, Access)] = &[
    ("CreateDestination", Access::Scoped(Scope::Admin)),
    ("GetDestination", Access::Scoped(Scope::Read)),
    ("ListDestinations", Access::Scoped(Scope::Read)),
    ("UpdateDestination", Access::Scoped(Scope::Admin)),
    ("DeleteDestination", Access::Scoped(Scope::Admin)),
    ("ActivateDestination", Access::Scoped(Scope::Admin)),
    ("PauseDestination", Access::Scoped(Scope::Admin)),
    ("ListTemplates", Access::Scoped(Scope::Read)),
    ("PreviewRequests", Access::Scoped(Scope::Read)),
    // It sends any request the destination's key allows and returns Groove's answer.
    ("TestDestination", Access::Scoped(Scope::Admin)),
];

const DELIVERY_METHODS: &[(&str, Access)] = &[
    ("SendRecords", Access::Scoped(Scope::Send)),
    ("ListFailedRecords", Access::Scoped(Scope::Send)),
    ("RetryFailedRecords", Access::Scoped(Scope::Send)),
    ("DeleteFailedRecords", Access::Scoped(Scope::Send)),
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn admin_includes_read_but_not_send() {
        let admin: Scopes = [Scope::Admin].into_iter().collect();
        assert!(admin.grants(Scope::Admin));
        assert!(admin.grants(Scope::Read));
        assert!(!admin.grants(Scope::Send));
        let send: Scopes = [Scope::Send].into_iter().collect();
        assert!(!send.grants(Scope::Read));
        assert!(Scopes::default().is_empty());
    }

    /// Every method in the contract is listed, so none falls through to the closed default by accident, and
    /// no listed name is stale.
    #[test]
    fn every_contract_method_has_an_explicit_access() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut listed = 0;
        for file in set.file {
            let package = file.package().to_string();
            for service in file.service {
                let table = match service.name() {
                    "CredentialService" => CREDENTIAL_METHODS,
                    "DestinationService" => DESTINATION_METHODS,
                    "DeliveryService" => DELIVERY_METHODS,
                    other => panic!("service {other} has no access table"),
                };
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    assert!(
                        table.iter().any(|(name, _)| *name == method.name()),
                        "{path} is not listed"
                    );
                    listed += 1;
                }
            }
        }
        let tables = CREDENTIAL_METHODS.len() + DESTINATION_METHODS.len() + DELIVERY_METHODS.len();
        assert_eq!(listed, tables, "a listed method is not in the contract");
    }

    #[test]
    fn unknown_paths_need_an_unrestricted_admin() {
        assert_eq!(access_for("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(
            access_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Reflection
        );
        assert_eq!(
            access_for("/groove.destination.v1.DeliveryService/SendRecords"),
            Access::Scoped(Scope::Send)
        );
        assert_eq!(
            access_for("/groove.destination.v1.DeliveryService/Nope"),
            Access::UnrestrictedAdmin
        );
        assert_eq!(
            access_for("/other.Service/Method"),
            Access::UnrestrictedAdmin
        );
    }
}
