//! `GET /projects`, `GET /projects/{id}/tree` and `GET /projects/{id}/file`: the operator's
//! projects (ids and base branches only — never URLs or credentials) and previews of their
//! git-tracked content at a ref (see [`crate::workspace::preview`]).

use hyper::{Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::runs::{number, param, query};
use super::{App, json};
use crate::body::Body;
use crate::workspace::preview::{DEFAULT_ENTRIES, DEFAULT_FILE_BYTES, MAX_ENTRIES, MAX_FILE_BYTES, PreviewError};

impl From<PreviewError> for ApiError {
    fn from(e: PreviewError) -> ApiError {
        match e {
            PreviewError::Invalid(d) => ApiError::BadRequest(d),
            PreviewError::NotFound(d) => ApiError::NotFound(d),
            PreviewError::Binary(d) => ApiError::UnsupportedMediaType(d),
            PreviewError::Unavailable(d) => ApiError::Unavailable(d),
        }
    }
}

/// `{"projects": [{"id", "base"}…]}`, sorted by id.
pub fn list(app: &App) -> Response<Body> {
    let projects: Vec<_> = app
        .runs
        .workspaces
        .projects()
        .0
        .values()
        .map(|p| json!({"id": p.id, "base": p.base}))
        .collect();
    json(StatusCode::OK, &json!({ "projects": projects }))
}

fn flag(params: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match param(params, name) {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} must be 0, 1, true or false, not '{}'",
            other.escape_debug()
        ))),
    }
}

/// `GET /projects/{id}/tree?ref=&path=&recursive=&max_entries=`.
pub async fn tree(app: &App, id: &str, raw_query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let params = query(raw_query);
    let recursive = flag(&params, "recursive")?;
    let max_entries = number(&params, "max_entries", DEFAULT_ENTRIES as u64, 1, MAX_ENTRIES as u64)? as usize;
    let tree = app
        .runs
        .workspaces
        .tree(
            id,
            param(&params, "ref"),
            param(&params, "path").unwrap_or(""),
            recursive,
            max_entries,
        )
        .await?;
    Ok(json(StatusCode::OK, &serde_json::to_value(tree).expect("serialises")))
}

/// `GET /projects/{id}/file?ref=&path=&max_bytes=`.
pub async fn file(app: &App, id: &str, raw_query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let params = query(raw_query);
    let max_bytes = number(
        &params,
        "max_bytes",
        DEFAULT_FILE_BYTES as u64,
        1,
        MAX_FILE_BYTES as u64,
    )? as usize;
    let path = param(&params, "path").ok_or_else(|| ApiError::BadRequest("path is required".into()))?;
    let file = app
        .runs
        .workspaces
        .file(id, param(&params, "ref"), path, max_bytes)
        .await?;
    Ok(json(StatusCode::OK, &serde_json::to_value(file).expect("serialises")))
}
