//! CredentialService: store, show, change, delete and verify Groove API keys.

use tonic::{Request, Response, Status};

use crate::api::convert::{duration, now_ms, page_request, timestamp};
use crate::api::error::ApiError;
use crate::api::guard;
use crate::api::names::CREDENTIALS;
use crate::api::AppState;
use crate::delivery::Verification;
use crate::domain::config_validation::check_display_name;
use crate::domain::credential::{ApiKey, Credential};
use crate::domain::validation::Violations;
use crate::proto::credential_service_server::CredentialService;
use crate::proto::{self, verify_credential_response::Verdict};
use crate::store::{CredentialUpdate, NewCredential};

/// Longest API key accepted; Groove's are far shorter, this only bounds what we store.
const MAX_API_KEY_LEN: usize = 4096;
/// Fields UpdateCredential changes, as `update_mask` names them.
const UPDATABLE_FIELDS: [&str; 2] = ["display_name", "api_key"];
/// Fields of Credential that only the server sets.
const OUTPUT_ONLY_FIELDS: [&str; 6] = [
    "name",
    "api_key_hint",
    "create_time",
    "update_time",
    "state",
    "refusal",
];

pub struct Credentials {
    state: AppState,
}

impl Credentials {
    pub fn new(state: AppState) -> Self {
        Credentials { state }
    }
}

fn credential_to_proto(credential: Credential) -> proto::Credential {
    let state = match credential.refusal {
        Some(_) => proto::credential::State::Refused,
        None => proto::credential::State::Active,
    };
    proto::Credential {
        name: CREDENTIALS.name(&credential.id),
        display_name: credential.display_name,
        api_key_hint: credential.api_key_hint,
        create_time: Some(timestamp(credential.create_time_ms)),
        update_time: Some(timestamp(credential.update_time_ms)),
        state: state as i32,
        refusal: credential
            .refusal
            .map(|refusal| proto::credential::Refusal {
                http_status: i32::from(refusal.http_status),
                refuse_time: Some(timestamp(refusal.refuse_time_ms)),
                detail: refusal.detail,
            }),
    }
}

fn check_new_credential(request: &proto::CreateCredentialRequest) -> Result<(), ApiError> {
    let mut violations = Violations::default();
    check_display_name("display_name", &request.display_name, &mut violations);
    check_api_key("api_key", &request.api_key, &mut violations);
    violations.into_result().map_err(ApiError::from)
}

fn check_api_key(field: &str, key: &str, violations: &mut Violations) {
    let key = key.trim();
    if key.is_empty() {
        violations.push(field, "api key is required");
    } else if key.len() > MAX_API_KEY_LEN
        || key.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        // The key goes into an HTTP header: control characters or spaces would make it unusable.
        violations.push(
            field,
            "api key must be printable text without spaces, at most 4096 bytes",
        );
    }
}

/// The change an UpdateCredential request asks for: the fields its mask names (all of them for `*`; those given
/// a non-empty value for an empty mask), each checked like on create.
fn credential_update(
    id: String,
    request: &proto::UpdateCredentialRequest,
) -> Result<CredentialUpdate, ApiError> {
    let mut violations = Violations::default();
    let mut paths: Vec<&str> = match &request.update_mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
        _ => [
            ("display_name", &request.display_name),
            ("api_key", &request.api_key),
        ]
        .into_iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(path, _)| path)
        .collect(),
    };
    if paths.is_empty() {
        violations.push(
            "update_mask",
            "nothing to change: name display_name and/or api_key in update_mask, or give a new value",
        );
    }
    if paths.contains(&"*") {
        paths.retain(|path| *path != "*");
        paths.extend(UPDATABLE_FIELDS);
    }
    paths.sort_unstable();
    paths.dedup();
    let mut update = CredentialUpdate {
        id,
        display_name: None,
        api_key: None,
        now_ms: now_ms(),
    };
    for path in paths {
        match path {
            "display_name" => {
                check_display_name("display_name", &request.display_name, &mut violations);
                update.display_name = Some(request.display_name.trim().to_string());
            }
            "api_key" => {
                check_api_key("api_key", &request.api_key, &mut violations);
                update.api_key = Some(ApiKey::new(request.api_key.trim()));
            }
            output_only if OUTPUT_ONLY_FIELDS.contains(&output_only) => {
                violations.push("update_mask", format!("{output_only} is output only"));
            }
            other => violations.push(
                "update_mask",
                format!("unknown field {other:?}; the fields are display_name and api_key"),
            ),
        }
    }
    violations.into_result()?;
    Ok(update)
}

#[tonic::async_trait]
impl CredentialService for Credentials {
    async fn create_credential(
        &self,
        request: Request<proto::CreateCredentialRequest>,
    ) -> Result<Response<proto::CreateCredentialResponse>, Status> {
        let caller = guard::caller(&request)?;
        let request = request.into_inner();
        check_new_credential(&request)?;
        let id = CREDENTIALS.new_id("credential_id", &request.credential_id)?;
        let credential = self
            .state
            .store
            .create_credential(NewCredential {
                id,
                display_name: request.display_name.trim().to_string(),
                api_key: ApiKey::new(request.api_key.trim()),
                now_ms: now_ms(),
            })
            .await
            .map_err(ApiError::from)?;
        tracing::info!(credential = %CREDENTIALS.name(&credential.id), caller = caller.name(), "credential created");
        Ok(Response::new(proto::CreateCredentialResponse {
            credential: Some(credential_to_proto(credential)),
        }))
    }

    async fn get_credential(
        &self,
        request: Request<proto::GetCredentialRequest>,
    ) -> Result<Response<proto::GetCredentialResponse>, Status> {
        let id = CREDENTIALS.parse_name("name", &request.get_ref().name)?;
        let credential = self
            .state
            .store
            .get_credential(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::GetCredentialResponse {
            credential: Some(credential_to_proto(credential)),
        }))
    }

    async fn list_credentials(
        &self,
        request: Request<proto::ListCredentialsRequest>,
    ) -> Result<Response<proto::ListCredentialsResponse>, Status> {
        let request = request.into_inner();
        let page = page_request(request.page_size, &request.page_token)?;
        let page = self
            .state
            .store
            .list_credentials(page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::ListCredentialsResponse {
            credentials: page.items.into_iter().map(credential_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn delete_credential(
        &self,
        request: Request<proto::DeleteCredentialRequest>,
    ) -> Result<Response<proto::DeleteCredentialResponse>, Status> {
        let caller = guard::caller(&request)?;
        let id = CREDENTIALS.parse_name("name", &request.get_ref().name)?;
        self.state
            .engine
            .delete_credential(&id)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(credential = %CREDENTIALS.name(&id), caller = caller.name(), "credential deleted");
        Ok(Response::new(proto::DeleteCredentialResponse {}))
    }

    async fn verify_credential(
        &self,
        request: Request<proto::VerifyCredentialRequest>,
    ) -> Result<Response<proto::VerifyCredentialResponse>, Status> {
        let caller = guard::caller(&request)?;
        let id = CREDENTIALS.parse_name("name", &request.get_ref().name)?;
        let (verification, latency) = self
            .state
            .engine
            .verify_credential(&id)
            .await
            .map_err(ApiError::from)?;
        let latency = duration(latency);
        let (verdict, http_status, detail) = match verification {
            Verification::Valid { status } => (
                Verdict::Valid,
                status,
                format!("groove accepted the key ({status})"),
            ),
            Verification::Invalid { status } => (
                Verdict::Invalid,
                status,
                format!("groove refused the key ({status})"),
            ),
            Verification::Unreachable { status, detail } => {
                (Verdict::Unreachable, status.unwrap_or(0), detail)
            }
        };
        tracing::info!(credential = %CREDENTIALS.name(&id), caller = caller.name(), verdict = verdict.as_str_name(), http_status, "credential verified");
        Ok(Response::new(proto::VerifyCredentialResponse {
            verdict: verdict as i32,
            http_status: i32::from(http_status),
            detail,
            latency: Some(latency),
        }))
    }

    async fn update_credential(
        &self,
        request: Request<proto::UpdateCredentialRequest>,
    ) -> Result<Response<proto::UpdateCredentialResponse>, Status> {
        let caller = guard::caller(&request)?;
        let request = request.into_inner();
        let id = CREDENTIALS.parse_name("name", &request.name)?;
        let update = credential_update(id, &request)?;
        let fields: Vec<&str> = [
            update.display_name.is_some().then_some("display_name"),
            update.api_key.is_some().then_some("api_key"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let verify = !request.skip_verification;
        let credential = self
            .state
            .engine
            .update_credential(update, verify)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(
            credential = %request.name,
            caller = caller.name(),
            fields = %fields.join(","),
            key_verified = verify && fields.contains(&"api_key"),
            "credential updated"
        );
        Ok(Response::new(proto::UpdateCredentialResponse {
            credential: Some(credential_to_proto(credential)),
        }))
    }
}
