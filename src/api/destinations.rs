//! DestinationService: the lifecycle of destinations and the template catalogue.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use url::Url;

use crate::admin::NewDestination;
use crate::api::convert::{
    batching_from_proto, config_from_proto, delivery_from_proto, destination_to_proto, duration,
    endpoint_from_proto, method_from_proto, page_request, parse_etag, webhook_from_proto,
};
use crate::api::error::ApiError;
use crate::api::guard;
use crate::api::names::{CREDENTIALS, DESTINATIONS};
use crate::api::results::{answer_to_proto, groove_response, incoming_record, planned_request};
use crate::api::templates::template_to_proto;
use crate::api::AppState;
use crate::auth::{check_destination, AuthError, Caller};
use crate::delivery::{PlannedCall, TestPayload, TestSent};
use crate::domain::config_validation::{apply_default_grouping, check_display_name};
use crate::domain::destination::{Destination, DestinationConfig, DestinationState};
use crate::domain::headers::check_header;
use crate::domain::templates;
use crate::domain::url_guard;
use crate::domain::validation::Violations;
use crate::domain::webhook_url::keep_stored_password;
use crate::proto::destination_service_server::DestinationService;
use crate::proto::{self, destination_config, preview_requests_request, test_destination_request};

/// Most sample records one preview takes.
const MAX_PREVIEW_RECORDS: usize = 1000;
/// Fields an empty update mask stands for.
const UPDATABLE_FIELDS: [&str; 3] = ["display_name", "credential", "config"];

pub struct Destinations {
    state: AppState,
}

impl Destinations {
    pub fn new(state: AppState) -> Self {
        Destinations { state }
    }

    /// The credential and configuration of a destination to be (CreateDestination, under `destination`) or of a
    /// draft (TestDestination, under `draft`), checked alike; what is wrong is added to `violations`, named from
    /// `prefix`.
    fn check_draft(
        &self,
        prefix: &str,
        credential: &str,
        config: Option<proto::DestinationConfig>,
        violations: &mut Violations,
    ) -> Result<(Option<String>, Option<DestinationConfig>), ApiError> {
        let credential_id =
            match CREDENTIALS.parse_name(&format!("{prefix}.credential"), credential) {
                Ok(id) => Some(id),
                Err(ApiError::InvalidArgument(found)) => {
                    violations.0.extend(found.0);
                    None
                }
                Err(other) => return Err(other),
            };
        let config = match config.map(config_from_proto) {
            Some(Ok(config)) => Some(config),
            Some(Err(found)) => {
                violations
                    .0
                    .extend(found.0.into_iter().map(|mut violation| {
                        violation.field = format!("{prefix}.{}", violation.field);
                        violation
                    }));
                None
            }
            None => {
                violations.push(format!("{prefix}.config"), "config is required");
                None
            }
        };
        if let Some(config) = &config {
            if let Err(found) = self.state.destinations.validate(config) {
                violations
                    .0
                    .extend(found.0.into_iter().map(|mut violation| {
                        violation.field = format!("{prefix}.{}", violation.field);
                        violation
                    }));
            }
        }
        Ok((credential_id, config))
    }

    async fn get(&self, field: &str, name: &str) -> Result<Destination, ApiError> {
        let id = DESTINATIONS.parse_name(field, name)?;
        Ok(self.state.store.get_destination(&id).await?)
    }

    /// Moves a destination to `target` as its lifecycle allows.
    async fn change_state(
        &self,
        caller: &Caller,
        name: &str,
        target: DestinationState,
    ) -> Result<Destination, ApiError> {
        let id = DESTINATIONS.parse_name("name", name)?;
        let saved = self
            .state
            .destinations
            .change_state(name, &id, target)
            .await?;
        tracing::info!(destination = %name, caller = caller.name(), state = saved.state.as_str(), "destination state changed");
        Ok(saved)
    }
}

/// Applies the masked parts of `incoming` to `current`. Sub-parts of `config` are converted on their own, so a
/// mask of `config.batching` needs nothing else of the config.
fn apply_update(
    current: &mut Destination,
    incoming: proto::Destination,
    paths: &[String],
) -> Result<(), Violations> {
    let mut violations = Violations::default();
    let config = incoming.config.unwrap_or_default();
    let mut grouping_given = true;
    for path in paths {
        match path.as_str() {
            "display_name" => {
                check_display_name(
                    "destination.display_name",
                    &incoming.display_name,
                    &mut violations,
                );
                current.display_name = incoming.display_name.trim().to_string();
            }
            "credential" => {
                match CREDENTIALS.parse_name("destination.credential", &incoming.credential) {
                    Ok(id) => current.credential_id = id,
                    Err(ApiError::InvalidArgument(found)) => violations.0.extend(found.0),
                    Err(other) => violations.push("destination.credential", other.to_string()),
                }
            }
            "config" => match config_from_proto(config.clone()) {
                Ok(mut new_config) => {
                    new_config.response_webhook = keep_stored_password(
                        new_config.response_webhook,
                        current.config.response_webhook.as_deref(),
                    );
                    current.config = new_config
                }
                Err(found) => violations.0.extend(found.0),
            },
            "config.template" | "config.manual" => {
                let kind_matches = matches!(
                    (path.as_str(), &config.endpoint),
                    (
                        "config.template",
                        Some(destination_config::Endpoint::Template(_))
                    ) | (
                        "config.manual",
                        Some(destination_config::Endpoint::Manual(_))
                    )
                );
                if !kind_matches {
                    violations.push(
                        format!("destination.{path}"),
                        format!("{path} is named in update_mask but not set"),
                    );
                } else if let Some(endpoint) =
                    endpoint_from_proto(config.endpoint.clone(), &mut violations)
                {
                    current.config.endpoint = endpoint;
                }
            }
            "config.exclude_attributes" => {
                current.config.exclude_attributes = config.exclude_attributes.clone()
            }
            "config.batching" => {
                let (batching, given) =
                    batching_from_proto(config.batching.clone(), &mut violations);
                current.config.batching = batching;
                grouping_given = given;
            }
            "config.response_webhook" => {
                current.config.response_webhook = keep_stored_password(
                    webhook_from_proto(config.response_webhook.clone()),
                    current.config.response_webhook.as_deref(),
                )
            }
            "config.delivery" => {
                current.config.delivery =
                    delivery_from_proto(config.delivery.clone(), &mut violations)
            }
            "name" | "state" | "create_time" | "update_time" | "etag" => {
                violations.push("update_mask", format!("{path} is output only"));
            }
            other => violations.push("update_mask", format!("unknown field {other:?}")),
        }
    }
    if !grouping_given {
        apply_default_grouping(&mut current.config);
    }
    // Violations from config conversion are named from `config`; report them from the request root.
    violations.into_result().map_err(|found| {
        Violations(
            found
                .0
                .into_iter()
                .map(|mut violation| {
                    if violation.field.starts_with("config") {
                        violation.field = format!("destination.{}", violation.field);
                    }
                    violation
                })
                .collect(),
        )
    })
}

#[tonic::async_trait]
impl DestinationService for Destinations {
    async fn create_destination(
        &self,
        request: Request<proto::CreateDestinationRequest>,
    ) -> Result<Response<proto::CreateDestinationResponse>, Status> {
        let caller = guard::caller(&request)?;
        let request = request.into_inner();
        if request.destination_id.is_empty() && caller.limited_to_some_destinations() {
            return Err(ApiError::from(AuthError::NeedsChosenId {
                caller: caller.name().to_string(),
                patterns: caller.destination_patterns(),
            })
            .into());
        }
        let Some(incoming) = request.destination else {
            return Err(ApiError::invalid("destination", "destination is required").into());
        };
        let mut violations = Violations::default();
        check_display_name(
            "destination.display_name",
            &incoming.display_name,
            &mut violations,
        );
        let (credential_id, config) = self.check_draft(
            "destination",
            &incoming.credential,
            incoming.config,
            &mut violations,
        )?;
        violations.into_result().map_err(ApiError::from)?;
        let (Some(credential_id), Some(config)) = (credential_id, config) else {
            return Err(Status::internal("validated destination lost a field"));
        };
        let id = DESTINATIONS.new_id("destination_id", &request.destination_id)?;
        check_destination(&caller, &id).map_err(ApiError::from)?;
        let saved = self
            .state
            .destinations
            .create(NewDestination {
                id,
                display_name: incoming.display_name.trim().to_string(),
                credential_id,
                config,
            })
            .await
            .map_err(ApiError::from)?;
        tracing::info!(destination = %DESTINATIONS.name(&saved.id), caller = caller.name(), "destination created");
        Ok(Response::new(proto::CreateDestinationResponse {
            destination: Some(destination_to_proto(saved)),
        }))
    }

    async fn get_destination(
        &self,
        request: Request<proto::GetDestinationRequest>,
    ) -> Result<Response<proto::GetDestinationResponse>, Status> {
        guard::destination_caller(&request, "name", &request.get_ref().name)?;
        let destination = self.get("name", &request.get_ref().name).await?;
        Ok(Response::new(proto::GetDestinationResponse {
            destination: Some(destination_to_proto(destination)),
        }))
    }

    async fn list_destinations(
        &self,
        request: Request<proto::ListDestinationsRequest>,
    ) -> Result<Response<proto::ListDestinationsResponse>, Status> {
        let caller = guard::caller(&request)?;
        let request = request.into_inner();
        let page = page_request(request.page_size, &request.page_token)?;
        let page = self
            .state
            .store
            .list_destinations(page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::ListDestinationsResponse {
            // A caller limited to some destinations sees only those; a page may come out short.
            destinations: page
                .items
                .into_iter()
                .filter(|destination| caller.may_use_destination(&destination.id))
                .map(destination_to_proto)
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_destination(
        &self,
        request: Request<proto::UpdateDestinationRequest>,
    ) -> Result<Response<proto::UpdateDestinationResponse>, Status> {
        let caller = guard::caller(&request)?;
        let request = request.into_inner();
        let Some(incoming) = request.destination else {
            return Err(ApiError::invalid("destination", "destination is required").into());
        };
        let id = DESTINATIONS.parse_name("destination.name", &incoming.name)?;
        check_destination(&caller, &id).map_err(ApiError::from)?;
        let expected = parse_etag("destination.etag", &incoming.etag)?;
        let name = incoming.name.clone();
        let etag = incoming.etag.clone();
        let paths: Vec<String> = match request.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            _ => UPDATABLE_FIELDS
                .iter()
                .map(|field| field.to_string())
                .collect(),
        };
        let saved = self
            .state
            .destinations
            .update(
                &name,
                &id,
                expected.map(|revision| (revision, etag.as_str())),
                |destination| apply_update(destination, incoming, &paths),
            )
            .await
            .map_err(ApiError::from)?;
        tracing::info!(destination = %DESTINATIONS.name(&saved.id), caller = caller.name(), fields = %paths.join(","), "destination updated");
        Ok(Response::new(proto::UpdateDestinationResponse {
            destination: Some(destination_to_proto(saved)),
        }))
    }

    async fn delete_destination(
        &self,
        request: Request<proto::DeleteDestinationRequest>,
    ) -> Result<Response<proto::DeleteDestinationResponse>, Status> {
        let caller = guard::destination_caller(&request, "name", &request.get_ref().name)?;
        let request = request.into_inner();
        let id = DESTINATIONS.parse_name("name", &request.name)?;
        let expected = parse_etag("etag", &request.etag)?;
        self.state
            .destinations
            .delete(&id, expected)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(destination = %request.name, caller = caller.name(), "destination deleted");
        Ok(Response::new(proto::DeleteDestinationResponse {}))
    }

    async fn activate_destination(
        &self,
        request: Request<proto::ActivateDestinationRequest>,
    ) -> Result<Response<proto::ActivateDestinationResponse>, Status> {
        let caller = guard::destination_caller(&request, "name", &request.get_ref().name)?;
        let destination = self
            .change_state(&caller, &request.get_ref().name, DestinationState::Active)
            .await?;
        Ok(Response::new(proto::ActivateDestinationResponse {
            destination: Some(destination_to_proto(destination)),
        }))
    }

    async fn pause_destination(
        &self,
        request: Request<proto::PauseDestinationRequest>,
    ) -> Result<Response<proto::PauseDestinationResponse>, Status> {
        let caller = guard::destination_caller(&request, "name", &request.get_ref().name)?;
        let destination = self
            .change_state(&caller, &request.get_ref().name, DestinationState::Paused)
            .await?;
        Ok(Response::new(proto::PauseDestinationResponse {
            destination: Some(destination_to_proto(destination)),
        }))
    }

    async fn list_templates(
        &self,
        _request: Request<proto::ListTemplatesRequest>,
    ) -> Result<Response<proto::ListTemplatesResponse>, Status> {
        Ok(Response::new(proto::ListTemplatesResponse {
            templates: templates::all().iter().map(template_to_proto).collect(),
        }))
    }

    async fn preview_requests(
        &self,
        request: Request<proto::PreviewRequestsRequest>,
    ) -> Result<Response<proto::PreviewRequestsResponse>, Status> {
        if let Some(preview_requests_request::Source::Destination(name)) = &request.get_ref().source
        {
            guard::destination_caller(&request, "destination", name)?;
        }
        let request = request.into_inner();
        if request.records.is_empty() || request.records.len() > MAX_PREVIEW_RECORDS {
            return Err(ApiError::invalid(
                "records",
                format!("give 1 to {MAX_PREVIEW_RECORDS} sample records"),
            )
            .into());
        }
        let config = match request.source {
            Some(preview_requests_request::Source::Destination(name)) => {
                self.get("destination", &name).await?.config
            }
            Some(preview_requests_request::Source::Config(config)) => config_from_proto(config)?,
            None => {
                return Err(
                    ApiError::invalid("source", "one of destination or config is required").into(),
                )
            }
        };
        let records = request.records.into_iter().map(incoming_record).collect();
        let preview = self.state.engine.preview(&config, records)?;
        Ok(Response::new(proto::PreviewRequestsResponse {
            requests: preview
                .requests
                .iter()
                .map(|(call, record_ids)| planned_request(call, record_ids))
                .collect(),
            errors: preview
                .errors
                .into_iter()
                .map(|(record_id, violation)| proto::RecordError {
                    record_id,
                    field: violation.field,
                    description: violation.description,
                })
                .collect(),
        }))
    }

    async fn test_destination(
        &self,
        request: Request<proto::TestDestinationRequest>,
    ) -> Result<Response<proto::TestDestinationResponse>, Status> {
        // A draft names no destination: only a caller that may use every destination may test one.
        let caller = if request.get_ref().draft.is_none() {
            guard::destination_caller(&request, "name", &request.get_ref().name)?
        } else {
            let caller = guard::caller(&request)?;
            if caller.limited_to_some_destinations() {
                return Err(ApiError::from(AuthError::DraftNeedsAllDestinations {
                    caller: caller.name().to_string(),
                    patterns: caller.destination_patterns(),
                })
                .into());
            }
            caller
        };
        let request = request.into_inner();
        let (name, credential_id, config) = match request.draft {
            None => {
                let destination = self.get("name", &request.name).await?;
                (request.name, destination.credential_id, destination.config)
            }
            Some(_) if !request.name.is_empty() => {
                return Err(ApiError::invalid("draft", "give name or draft, not both").into())
            }
            Some(draft) => {
                let mut violations = Violations::default();
                let (credential_id, config) =
                    self.check_draft("draft", &draft.credential, draft.config, &mut violations)?;
                violations.into_result().map_err(ApiError::from)?;
                let (Some(credential_id), Some(config)) = (credential_id, config) else {
                    return Err(Status::internal("validated draft lost a field"));
                };
                ("draft".to_string(), credential_id, config)
            }
        };
        let (payload, record_ids) = match request.payload {
            Some(test_destination_request::Payload::Record(record)) => {
                let record_id = record.id.clone();
                (
                    TestPayload::Record(incoming_record(record)),
                    vec![record_id],
                )
            }
            Some(test_destination_request::Payload::Request(edited)) => (
                TestPayload::Request(edited_call(&edited, self.state.engine.base_url())?),
                edited.record_ids.clone(),
            ),
            None => {
                return Err(
                    ApiError::invalid("payload", "one of record or request is required").into(),
                )
            }
        };
        let sent = self
            .state
            .engine
            .test_send(&name, &credential_id, &config, payload)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(destination = %name, caller = caller.name(), url = %sent.call.url, "test request sent");
        Ok(Response::new(test_response(&sent, &record_ids)))
    }
}

/// What a test send shows: the request as sent, Groove's answer (an empty one when none came) and why not.
fn test_response(sent: &TestSent, record_ids: &[String]) -> proto::TestDestinationResponse {
    proto::TestDestinationResponse {
        request: Some(planned_request(&sent.call, record_ids)),
        response: Some(match &sent.answer {
            Some(answer) => answer_to_proto(answer),
            None => groove_response(0, &[], &[]),
        }),
        latency: Some(duration(sent.latency)),
        error: sent.error.clone(),
    }
}

/// A request edited by hand for TestDestination: the method is required, and `Authorization` / `Content-Type`
/// are set by the client whatever the edit says. The URL passes the same guard as a manual destination's, on
/// its text as given: a parser would drop tabs and line breaks or decode dot segments before anything could
/// look at them.
fn edited_call(edited: &proto::PlannedRequest, base: &Url) -> Result<PlannedCall, ApiError> {
    let mut violations = Violations::default();
    let method = method_from_proto("request.method", edited.method, &mut violations);
    let url = match url_guard::resolve_absolute(base, &edited.url) {
        Ok(url) => Some(url),
        Err(error) => {
            violations.push("request.url", error.to_string());
            None
        }
    };
    let headers: Vec<(String, String)> = edited
        .headers
        .iter()
        .filter(|header| {
            !header.name.eq_ignore_ascii_case("authorization")
                && !header.name.eq_ignore_ascii_case("content-type")
        })
        .map(|header| (header.name.clone(), header.value.clone()))
        .collect();
    for (index, (name, value)) in headers.iter().enumerate() {
        if let Err(error) = check_header(name, value) {
            violations.push(format!("request.headers[{index}]"), error.to_string());
        }
    }
    violations.into_result()?;
    let (Some(method), Some(url)) = (method, url) else {
        return Err(ApiError::invalid("request", "request is incomplete"));
    };
    Ok(PlannedCall {
        method,
        url,
        headers: Arc::from(headers),
        body: Bytes::from(edited.body.clone().into_bytes()),
    })
}
