//! `GET /models` and `GET /clis`: what the operator configured, in the reference's shapes.

use serde_json::json;

use crate::config::Config;

pub fn models(config: &Config) -> serde_json::Value {
    json!({ "models": config.models, "count": config.models.len() })
}

pub fn clis(config: &Config) -> serde_json::Value {
    json!({ "clis": config.clis, "count": config.clis.len() })
}
