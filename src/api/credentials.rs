//! CredentialService: store, show, delete and verify Groove API keys.

use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::api::convert::{check_display_name, duration, now_ms, page_request, timestamp};
use crate::api::error::ApiError;
use crate::api::guard;
use crate::api::names::CREDENTIALS;
use crate::api::AppState;
use crate::domain::credential::{ApiKey, Credential};
use crate::groove::Verification;
use crate::proto::credential_service_server::CredentialService;
use crate::proto::{self, verify_credential_response::Verdict};
use crate::store::NewCredential;

/// Longest API key accepted; Groove's are far shorter, this only bounds what we store.
const MAX_API_KEY_LEN: usize = 4096;

pub struct Credentials {
    state: AppState,
}

impl Credentials {
    pub fn new(state: AppState) -> Self {
        Credentials { state }
    }
}

fn credential_to_proto(credential: Credential) -> proto::Credential {
    proto::Credential {
        name: CREDENTIALS.name(&credential.id),
        display_name: credential.display_name,
        api_key_hint: credential.api_key_hint,
        create_time: Some(timestamp(credential.create_time_ms)),
        update_time: Some(timestamp(credential.update_time_ms)),
    }
}

fn check_new_credential(request: &proto::CreateCredentialRequest) -> Result<(), ApiError> {
    let mut violations = crate::domain::validation::Violations::default();
    check_display_name("display_name", &request.display_name, &mut violations);
    let key = request.api_key.trim();
    if key.is_empty() {
        violations.push("api_key", "api key is required");
    } else if key.len() > MAX_API_KEY_LEN
        || key.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        // The key goes into an HTTP header: control characters or spaces would make it unusable.
        violations.push(
            "api_key",
            "api key must be printable text without spaces, at most 4096 bytes",
        );
    }
    violations.into_result().map_err(ApiError::from)
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
            .store
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
        let key = self
            .state
            .store
            .credential_api_key(&id)
            .await
            .map_err(ApiError::from)?;
        let started = Instant::now();
        let verification = self.state.engine.groove().verify(&key).await;
        let latency = duration(started.elapsed());
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
        tracing::info!(credential = %CREDENTIALS.name(&id), caller = caller.name(), verdict = ?verdict, http_status, "credential verified");
        Ok(Response::new(proto::VerifyCredentialResponse {
            verdict: verdict as i32,
            http_status: i32::from(http_status),
            detail,
            latency: Some(latency),
        }))
    }
}
