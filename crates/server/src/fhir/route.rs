//! `POST /api/rooms/{room}/fhir`: the doctor of a room asks for its measurements to be
//! exported now. Body `{"subject":"Patient/<id>"}` (or empty, when the platform already set
//! the room's subject). Answers:
//!
//! - `202 {"bundle","observations","skipped"}`: the Bundle is in the outbox, delivery follows;
//! - `401`/`403`: no valid token, or not a doctor's token for this room;
//! - `404`: the export is off (`fhir.endpoint` is empty);
//! - `409`: nothing measured since the last export, or nothing of it that maps to FHIR;
//! - `422`: no subject, or one that is not a Patient reference (Cabine never invents one);
//! - `503`: the outbox is full (`fhir.max_pending`), or a room limit.
//!
//! Every request is audited under the requester's own identity.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cabine_proto::jwt::AuthError;
use cabine_proto::{Role, RoomId};
use serde::Deserialize;

use super::{ExportError, Subject};
use crate::http::guard::session_claims;
use crate::http::ApiError;
use crate::state::AppState;

/// The request body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    /// The patient reference.
    #[serde(default)]
    subject: Option<String>,
}

/// The handler.
pub(crate) async fn export(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let room =
        RoomId::parse(&room).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let claims = session_claims(&st, &headers, &room, peer)?;
    let refusal = if !claims.is_for_room(&room) {
        Some((
            "wrong_room",
            AuthError::WrongRoom {
                token_room: claims.room.clone(),
                room: room.to_string(),
            },
        ))
    } else if claims.role != Role::Doctor {
        Some((
            "forbidden_role",
            AuthError::Forbidden {
                role: claims.role,
                action: "export the consultation's measurements (the room's doctor only)",
            },
        ))
    } else {
        None
    };
    if let Some((reason, e)) = refusal {
        st.count_refusal(reason);
        st.audit_refusal(
            room.as_str(),
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    // The measurements are kept where the room lives.
    if let Some(elsewhere) = crate::http::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let Some(fhir) = st.fhir() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "FHIR export is off on this server (fhir.endpoint is empty)",
        ));
    };
    let request: ExportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExportRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"subject\":\"Patient/<id>\"}}: {e}"),
            )
        })?
    };
    let outcome = match request.subject.as_deref().map(Subject::parse).transpose() {
        Ok(subject) => fhir.export(&room, subject).await,
        Err(e) => Err(ExportError::Subject(e)),
    };
    match outcome {
        Ok(x) => {
            st.audit(
                "fhir_export",
                &room,
                &claims.sub,
                Some(claims.role),
                Some(peer),
                &format!(
                    "requested: bundle {} with {} observations queued",
                    x.bundle, x.observations
                ),
            );
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "bundle": x.bundle.as_str(),
                    "observations": x.observations,
                    "skipped": x.skipped,
                })),
            )
                .into_response())
        }
        Err(e) => {
            let status = match &e {
                ExportError::NoSubject | ExportError::Subject(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ExportError::Nothing | ExportError::NothingExportable(_) => StatusCode::CONFLICT,
                ExportError::Full(_) | ExportError::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            st.count_refusal("fhir_export_refused");
            st.audit(
                "refused",
                &room,
                &claims.sub,
                Some(claims.role),
                Some(peer),
                &format!("fhir_export: {e}"),
            );
            Err(ApiError::new(status, e.to_string()))
        }
    }
}
