//! The OpenAPI document (`src/api/openapi.json`) against the gateway it describes: it is what
//! `/openapi.json` serves, it names exactly the routes of `cligate::api::ROUTES`, its examples
//! match its own schemas, and every documented status of every operation is really produced by
//! the running gateway, with a body and headers that match what the document says.
//!
//! Schemas are checked by a small validator written here rather than a JSON Schema crate: the
//! document is OpenAPI 3.0, whose `nullable` and `$ref`-into-`components` are not plain JSON Schema
//! (a validator crate would need the document rewritten first), and it uses only a handful of
//! keywords. The validator knows exactly those, and `the_document_uses_only_keywords_the_validator_knows`
//! fails if the document starts using another one, so nothing is silently skipped.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cligate::api::Guard;
use common::{Gateway, Reply, RunStream, TEST_CLIS, fixtures, request};
use serde_json::{Value, json};

const TOKEN: &str = "openapi-test-token-0123456789";

/// Keywords the validator evaluates.
const VALIDATED: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "oneOf",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
];
/// Keywords that only annotate. `pattern` is enforced by the gateway, not here: it appears only on
/// request fields (checked below), which Schemathesis fuzzes against the gateway.
const ANNOTATIONS: &[&str] = &["description", "example", "format", "discriminator", "pattern"];

fn doc() -> Value {
    serde_json::from_str(cligate::api::OPENAPI).expect("openapi.json is JSON")
}

/// The document, with the lookups and the validator the tests need.
struct Spec(Value);

impl Spec {
    fn new() -> Spec {
        Spec(doc())
    }

    /// Follows `$ref`s (`#/a/b/c`) until a concrete object.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        while let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {r}"));
            node = self.0.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        node
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.0["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// The documented response of an operation for a status, resolved.
    fn response(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        self.operation(method, path)["responses"]
            .get(status.to_string())
            .map(|r| self.resolve(r))
    }

    fn statuses(&self, method: &str, path: &str) -> BTreeSet<u16> {
        self.operation(method, path)["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| {
                k.parse()
                    .unwrap_or_else(|_| panic!("{method} {path}: status {k} is not a number"))
            })
            .collect()
    }

    fn schema(&self, name: &str) -> &Value {
        &self.0["components"]["schemas"][name]
    }

    /// Errors of `value` against `schema` (empty when it matches).
    fn validate(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, value, "$", &mut errors);
        errors
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return;
        }
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = variants.iter().filter(|v| self.validate(v, value).is_empty()).count();
            if matching != 1 {
                errors.push(format!("{at}: matches {matching} of the oneOf variants: {value}"));
            }
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                other => panic!("unknown type {other}"),
            };
            if !ok {
                errors.push(format!("{at}: {value} is not of type {kind}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let Some(n) = value.as_f64() {
            if schema.get("minimum").and_then(Value::as_f64).is_some_and(|min| n < min) {
                errors.push(format!("{at}: {n} is below the minimum"));
            }
            if schema.get("maximum").and_then(Value::as_f64).is_some_and(|max| n > max) {
                errors.push(format!("{at}: {n} is above the maximum"));
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if schema
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|min| len < min)
            {
                errors.push(format!("{at}: {s:?} is shorter than minLength"));
            }
            if schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|max| len > max)
            {
                errors.push(format!("{at}: {s:?} is longer than maxLength"));
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !object.contains_key(name.as_str().unwrap()) {
                    errors.push(format!("{at}: required property {name} is missing"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, item) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => self.check(property, item, &format!("{at}.{key}"), errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => errors.push(format!("{at}: unexpected property {key}")),
                        Some(extra @ Value::Object(_)) => self.check(extra, item, &format!("{at}.{key}"), errors),
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.check(items, item, &format!("{at}[{i}]"), errors);
            }
        }
    }

    /// Checks that `value` matches `schema` and sends nothing the schema does not name.
    fn assert_valid(&self, schema: &Value, value: &Value, what: &str) {
        let mut errors = self.validate(schema, value);
        self.undocumented(schema, value, "$", &mut errors);
        assert!(errors.is_empty(), "{what}: {value}\n{}", errors.join("\n"));
    }

    /// Properties of `value` that an object schema listing its properties does not name, unless it
    /// says what others may be (`additionalProperties`): in JSON Schema they are allowed, but here
    /// the document is meant to describe everything the gateway sends. Within a `oneOf`, the
    /// variant that matches is followed.
    fn undocumented(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array)
            && let Some(variant) = variants.iter().find(|v| self.validate(v, value).is_empty())
        {
            self.undocumented(variant, value, at, errors);
        }
        if let (Some(properties), Some(object)) =
            (schema.get("properties").and_then(Value::as_object), value.as_object())
        {
            for (key, item) in object {
                match properties.get(key) {
                    Some(property) => self.undocumented(property, item, &format!("{at}.{key}"), errors),
                    None if schema.get("additionalProperties").is_none() => {
                        errors.push(format!("{at}: property {key} is not documented"))
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.undocumented(items, item, &format!("{at}[{i}]"), errors);
            }
        }
    }

    /// Checks a complete response against the document: a documented status, the documented media
    /// type, the required headers, and a body matching the schema (for errors, the Error schema).
    fn check_reply(&self, method: &str, path: &str, reply: &Reply) {
        let status = reply.status.as_u16();
        let what = format!("{method} {path} → {status}");
        let response = self.response(method, path, status).unwrap_or_else(|| {
            panic!(
                "{what} is not documented; body {:?}",
                String::from_utf8_lossy(&reply.body)
            )
        });
        self.check_headers(response, &reply.headers, &what);
        let (media, schema) = self.media(response, &reply.headers, &what);
        if media == "application/x-ndjson" {
            let text = std::str::from_utf8(&reply.body).expect("UTF-8 frames");
            assert!(text.ends_with('\n'), "{what}: {text:?}");
            for line in text.lines() {
                self.assert_valid(schema, &serde_json::from_str(line).expect("a JSON frame"), &what);
            }
        } else if media.ends_with("json") {
            self.assert_valid(schema, &reply.json(), &what);
        } else {
            let text = std::str::from_utf8(&reply.body).expect("text body");
            self.assert_valid(schema, &Value::String(text.into()), &what);
        }
        if status >= 400 {
            assert_eq!(schema, &json!({"$ref": "#/components/schemas/Error"}), "{what}");
            reply.assert_error(status);
        }
    }

    fn check_headers(&self, response: &Value, headers: &hyper::HeaderMap, what: &str) {
        for (name, header) in response.get("headers").and_then(Value::as_object).into_iter().flatten() {
            match headers.get(name.as_str()) {
                Some(value) => {
                    let text = value.to_str().unwrap();
                    let schema = self.resolve(&header["schema"]);
                    let value = match schema["type"].as_str() {
                        Some("integer") => json!(text.parse::<i64>().unwrap_or_else(|_| panic!("{what}: {name}"))),
                        _ => json!(text),
                    };
                    self.assert_valid(schema, &value, &format!("{what}: header {name}"));
                }
                None => assert!(header["required"] != true, "{what}: required header {name} is missing"),
            }
        }
    }

    /// The documented media type matching the response's content type, and its schema.
    fn media<'a>(&'a self, response: &'a Value, headers: &hyper::HeaderMap, what: &str) -> (&'a str, &'a Value) {
        let content_type = headers
            .get("content-type")
            .unwrap_or_else(|| panic!("{what}: no content type"))
            .to_str()
            .unwrap();
        let essence = content_type.split(';').next().unwrap().trim();
        let (media, body) = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no documented content"))
            .iter()
            .find(|(m, _)| m.as_str() == essence)
            .unwrap_or_else(|| panic!("{what}: content type {content_type} is not documented"));
        (media.as_str(), &body["schema"])
    }
}

#[tokio::test]
async fn the_served_document_is_the_file_and_valid_json() {
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json")).unwrap();
    let gw = Gateway::start(&[]).await;
    let reply = gw.get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(std::str::from_utf8(&reply.body).unwrap(), file);
    let served: Value = serde_json::from_slice(&reply.body).expect("valid JSON");
    assert!(
        served["openapi"].as_str().unwrap().starts_with("3.0."),
        "{}",
        served["openapi"]
    );
    assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Open even when tokens are configured.
    let gw = Gateway::start(&[("AUTH_TOKENS", TOKEN)]).await;
    assert_eq!(gw.get("/openapi.json").await.body, reply.body);
}

#[test]
fn the_documented_operations_are_exactly_the_routes() {
    let doc = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if method != "parameters" {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = cligate::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes);
}

#[test]
fn open_routes_are_documented_without_security_and_the_rest_with_the_bearer_scheme() {
    let spec = Spec::new();
    assert_eq!(
        spec.0["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    // Optional: no requirement (`{}`) or the bearer token.
    assert_eq!(spec.0["security"], json!([{}, {"bearerAuth": []}]));
    for (method, path, guard) in cligate::api::ROUTES {
        let op = spec.operation(method, path);
        let statuses = spec.statuses(method, path);
        match guard {
            Guard::Token => {
                assert!(op.get("security").is_none(), "{method} {path} overrides the security");
                for status in [401, 403] {
                    assert!(statuses.contains(&status), "{method} {path} lacks {status}");
                }
            }
            Guard::Address => {
                assert_eq!(op["security"], json!([]), "{method} {path} needs no token");
                assert!(statuses.contains(&403), "{method} {path} lacks 403");
                assert!(!statuses.contains(&401), "{method} {path}");
            }
            Guard::Open => {
                assert_eq!(op["security"], json!([]), "{method} {path} must be open");
                assert!(!statuses.contains(&401) && !statuses.contains(&403), "{method} {path}");
            }
        }
    }
}

/// Every schema node reachable from the document, with where it is.
fn schemas(spec: &Spec) -> Vec<(String, Value)> {
    fn walk(node: &Value, at: String, out: &mut Vec<(String, Value)>) {
        out.push((at.clone(), node.clone()));
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|c| c.is_object()) {
                walk(child, format!("{at}/{key}"), out);
            }
        }
        for (name, child) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
            walk(child, format!("{at}/properties/{name}"), out);
        }
        for (i, child) in node
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk(child, format!("{at}/oneOf/{i}"), out);
        }
    }
    fn find(node: &Value, at: String, out: &mut Vec<(String, Value)>) {
        match node {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "schema" {
                        walk(child, format!("{at}/schema"), out);
                    } else if key != "example" && key != "examples" {
                        find(child, format!("{at}/{key}"), out);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    find(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, schema) in spec.0["components"]["schemas"].as_object().unwrap() {
        walk(schema, format!("#/components/schemas/{name}"), &mut out);
    }
    find(&spec.0["paths"], "#/paths".into(), &mut out);
    find(
        &spec.0["components"]["parameters"],
        "#/components/parameters".into(),
        &mut out,
    );
    find(
        &spec.0["components"]["responses"],
        "#/components/responses".into(),
        &mut out,
    );
    out
}

#[test]
fn the_document_uses_only_keywords_the_validator_knows() {
    let spec = Spec::new();
    let all = schemas(&spec);
    assert!(all.len() > 50, "{} schemas found", all.len());
    for (at, schema) in &all {
        for key in schema.as_object().unwrap().keys() {
            assert!(
                VALIDATED.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()),
                "{at}: keyword {key} is not checked by this test's validator"
            );
            if key == "pattern" {
                assert!(
                    at.starts_with("#/components/schemas/RunRequest/")
                        || at.starts_with("#/components/schemas/DetachedRunRequest/"),
                    "{at}: pattern outside the request"
                );
            }
        }
        if let Some(r) = schema.get("$ref") {
            spec.resolve(schema);
            assert_eq!(schema.as_object().unwrap().len(), 1, "{at}: $ref with siblings ({r})");
        }
    }
}

#[test]
fn every_example_matches_its_schema() {
    let spec = Spec::new();
    let mut checked = 0;
    let mut check = |schema: &Value, media: &str, example: &Value, at: &str| {
        if media == "application/x-ndjson" {
            let text = example
                .as_str()
                .unwrap_or_else(|| panic!("{at}: NDJSON example is not a string"));
            assert!(text.ends_with('\n'), "{at}");
            let frames: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(frames[0]["type"], "session", "{at}");
            assert_eq!(frames.last().unwrap()["type"], "exit", "{at}");
            for frame in &frames {
                spec.assert_valid(schema, frame, at);
            }
        } else {
            spec.assert_valid(schema, example, at);
        }
        checked += 1;
    };
    let mut media_objects = Vec::new();
    for (path, item) in spec.0["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            if let Some(content) = op.pointer("/requestBody/content").and_then(Value::as_object) {
                for (media, body) in content {
                    media_objects.push((format!("{at} request"), media.clone(), body.clone()));
                }
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                for (media, body) in spec.resolve(response)["content"].as_object().into_iter().flatten() {
                    media_objects.push((format!("{at} {status}"), media.clone(), body.clone()));
                }
            }
            for param in op.get("parameters").and_then(Value::as_array).into_iter().flatten() {
                let param = spec.resolve(param);
                check(&param["schema"], "", &param["example"], &format!("{at} parameter"));
            }
        }
    }
    for (at, media, body) in &media_objects {
        if let Some(example) = body.get("example") {
            check(&body["schema"], media, example, at);
        }
        for (name, example) in body.get("examples").and_then(Value::as_object).into_iter().flatten() {
            check(
                &body["schema"],
                media,
                &example["value"],
                &format!("{at} example {name}"),
            );
        }
    }
    // Examples on schemas and their properties.
    for (at, schema) in schemas(&spec) {
        if let Some(example) = schema.get("example") {
            check(&schema, "", example, &format!("{at} example"));
        }
    }
    assert!(checked > 30, "only {checked} examples checked");
}

#[test]
fn error_responses_use_the_error_schema_and_name_every_kind() {
    let spec = Spec::new();
    let error = spec.schema("Error");
    assert_eq!(error["required"], json!(["error", "message", "code", "detail"]));
    for (path, item) in spec.0["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let response = spec.resolve(response);
                let schema = &response["content"]["application/json"]["schema"];
                if !status.starts_with('2') {
                    assert_eq!(
                        schema,
                        &json!({"$ref": "#/components/schemas/Error"}),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    // Every kind the gateway can answer with is in the enum, with the status it goes with.
    use cligate::api::error::ApiError;
    let kinds = [
        ApiError::BadRequest("x".into()),
        ApiError::Unprocessable("x".into()),
        ApiError::Unauthorized,
        ApiError::Forbidden,
        ApiError::NotFound("x".into()),
        ApiError::MethodNotAllowed("GET"),
        ApiError::Conflict("x".into()),
        ApiError::Busy("x".into()),
        ApiError::UnsupportedMediaType("x".into()),
        ApiError::PayloadTooLarge(1),
        ApiError::RequestTimeout(Duration::from_secs(1)),
        ApiError::Overloaded {
            detail: "x".into(),
            retry_after: 1,
        },
        ApiError::Unavailable("x".into()),
    ];
    let documented: Vec<&str> = error["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(documented.len(), kinds.len());
    for kind in kinds {
        assert!(documented.contains(&kind.kind()), "{} is not documented", kind.kind());
    }
}

/// Sends requests and records which documented (method, path, status) it has seen.
struct Probe<'a> {
    spec: &'a Spec,
    seen: BTreeSet<(String, String, u16)>,
}

impl Probe<'_> {
    /// One request to `path` (the concrete path of the `pattern` operation), checked against the document.
    async fn call(
        &mut self,
        addr: SocketAddr,
        method: &str,
        pattern: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let reply = request(addr, method, path, body.map(|b| b.as_bytes().to_vec()), headers).await;
        self.spec.check_reply(method, pattern, &reply);
        self.seen.insert((method.into(), pattern.into(), reply.status.as_u16()));
        reply
    }

    /// Every operation of the document, built from its examples (path and query), with the given
    /// headers.
    async fn every_operation(&mut self, addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<(String, Reply)> {
        let mut replies = Vec::new();
        for (method, pattern, _) in cligate::api::ROUTES {
            let path = self.example_path(method, pattern) + &self.example_query(method, pattern);
            let body = (*method == "POST" && (*pattern == "/run" || *pattern == "/runs"))
                .then(|| self.example_body("minimal").to_string());
            let reply = self.call(addr, method, pattern, &path, body.as_deref(), headers).await;
            replies.push((format!("{method} {pattern}"), reply));
        }
        replies
    }

    /// The operation's parameters that are `in` the given place, resolved.
    fn parameters(&self, method: &str, pattern: &str, place: &str) -> Vec<&Value> {
        self.spec
            .operation(method, pattern)
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|param| self.spec.resolve(param))
            .filter(|param| param["in"] == place)
            .collect()
    }

    /// The path with each path parameter replaced by its documented example (a string).
    fn example_path(&self, method: &str, pattern: &str) -> String {
        let mut path = pattern.to_string();
        for param in self.parameters(method, pattern, "path") {
            let name = param["name"].as_str().unwrap();
            let example = param["example"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {pattern}: path parameter {name} has no string example"));
            path = path.replace(&format!("{{{name}}}"), example);
        }
        assert!(!path.contains('{'), "{path}");
        path
    }

    /// `?name=example&…` of every query parameter (numbers written as numbers), or "" for none.
    fn example_query(&self, method: &str, pattern: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let params = self.parameters(method, pattern, "query");
        for param in &params {
            let example = match &param["example"] {
                Value::String(s) => s.clone(),
                other @ Value::Number(_) => other.to_string(),
                other => panic!("{method} {pattern}: query parameter {} example {other}", param["name"]),
            };
            query.append_pair(param["name"].as_str().unwrap(), &example);
        }
        if params.is_empty() {
            String::new()
        } else {
            format!("?{}", query.finish())
        }
    }

    fn example_body(&self, name: &str) -> Value {
        let body = &self.spec.operation("POST", "/run")["requestBody"]["content"]["application/json"];
        body["examples"][name]["value"].clone()
    }

    /// Starts a run and checks its response head against the document; the stream is returned open.
    async fn open_run(&mut self, addr: SocketAddr, body: &Value, headers: &[(&str, &str)]) -> RunStream {
        let stream = RunStream::open(addr, body.to_string().into_bytes(), headers).await;
        let status = stream.status.as_u16();
        self.seen.insert(("POST".into(), "/run".into(), status));
        assert_eq!(status, 200, "run refused");
        let response = self.spec.response("POST", "/run", 200).unwrap();
        self.spec.check_headers(response, &stream.headers, "POST /run → 200");
        let (media, _) = self.spec.media(response, &stream.headers, "POST /run → 200");
        assert_eq!(media, "application/x-ndjson");
        assert!(stream.headers.contains_key("x-cligate-run-id"));
        stream
    }

    /// Reads a run to its end, checking every frame as sent against the Frame schema (and that
    /// it is the gateway's own `Frame`); returns the frames as JSON.
    async fn finish_run(&self, stream: RunStream) -> Vec<Value> {
        let frames = tokio::time::timeout(Duration::from_secs(30), stream.collect_json())
            .await
            .expect("run ends");
        for frame in &frames {
            self.spec.assert_valid(self.spec.schema("Frame"), frame, "frame");
            serde_json::from_value::<common::Frame>(frame.clone()).unwrap_or_else(|e| panic!("{e}: {frame}"));
        }
        assert_eq!(frames[0]["type"], "session", "{frames:?}");
        assert_eq!(frames.last().unwrap()["type"], "exit", "{frames:?}");
        assert_eq!(frames.iter().filter(|f| f["type"] == "exit").count(), 1, "{frames:?}");
        frames
    }
}

/// `PATH` for a test gateway: `dir` first, then the fixtures.
fn path_with(dir: &std::path::Path) -> String {
    format!(
        "{}:{}:{}",
        dir.display(),
        fixtures().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[tokio::test]
async fn every_documented_status_is_produced_and_matches_the_document() {
    let spec = Spec::new();
    let mut probe = Probe {
        spec: &spec,
        seen: BTreeSet::new(),
    };

    // A `codex` that is the `args` fixture, so the document's own request examples run unchanged.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixtures().join("args"), bin.path().join("codex")).unwrap();
    let path = path_with(bin.path());
    let clis = format!("{TEST_CLIS},codex");
    let open = Gateway::start(&[("PATH", &path), ("CLI_LIST", &clis)]).await;
    let addr = open.addr;

    // Nothing run yet: every operation from its examples. The session and run examples are 404s.
    for (what, reply) in probe.every_operation(addr, &[]).await {
        assert_eq!(reply.status, example_status(&what), "{what}");
    }
    assert_eq!(
        probe.call(addr, "GET", "/healthz", "/healthz", None, &[]).await.body,
        "ok"
    );

    // The request examples, as documented. The full one's run is looked at through `/runs` below.
    let mut full_run = String::new();
    for name in ["full", "minimal"] {
        let body = probe.example_body(name);
        let stream = probe.open_run(addr, &body, &[]).await;
        let run_id = run_id_of(&stream);
        let frames = probe.finish_run(stream).await;
        assert_eq!(frames[0]["run_id"], run_id.as_str(), "{frames:?}");
        assert_eq!(
            frames.last().unwrap(),
            &json!({"type": "exit", "code": 0, "reason": "exited"})
        );
        let stdout: String = frames
            .iter()
            .filter(|f| f["type"] == "stdout")
            .map(|f| f["data"].as_str().unwrap())
            .collect();
        if name == "full" {
            assert_eq!(frames[0]["id"], body["session_id"]);
            assert_eq!(stdout, "[--model]\n[gpt-4o]\n");
            full_run = run_id;
        } else {
            assert!(uuid_like(frames[0]["id"].as_str().unwrap()), "{}", frames[0]);
            assert_eq!(stdout, "");
        }
    }

    // A long run under the example's session id: its status, a duplicate (409), then a stop.
    let mut long = probe.example_body("full");
    long["cli"] = json!("sleep");
    long["args"] = json!(["30"]);
    let session = long["session_id"].as_str().unwrap().to_string();
    let stream = probe.open_run(addr, &long, &[]).await;
    let long_run = run_id_of(&stream);
    let status_path = probe.example_path("GET", "/sessions/{session_id}");
    let stop_path = probe.example_path("POST", "/sessions/{session_id}/stop");
    let started = Instant::now();
    loop {
        let reply = probe
            .call(addr, "GET", "/sessions/{session_id}", &status_path, None, &[])
            .await;
        let state = reply.json();
        assert_eq!(state["session_id"], session.as_str());
        if state["state"] == "running" {
            assert!(state["pid"].is_u64(), "{state}");
            assert_eq!(state["cli"], "sleep");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe
        .call(addr, "POST", "/run", "/run", Some(&long.to_string()), &[])
        .await
        .assert_error(409);
    probe
        .call(addr, "POST", "/runs", "/runs", Some(&long.to_string()), &[])
        .await
        .assert_error(409);
    let stopped = probe
        .call(addr, "POST", "/sessions/{session_id}/stop", &stop_path, None, &[])
        .await;
    assert_eq!(stopped.json(), json!({"session_id": session, "status": "stopped"}));
    let frames = probe.finish_run(stream).await;
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "exit", "code": 143, "reason": "stopped"})
    );
    // Finished: nothing to stop, but the session answers from its newest run's record.
    probe
        .call(addr, "POST", "/sessions/{session_id}/stop", &stop_path, None, &[])
        .await
        .assert_error(404);
    let ended = probe
        .call(addr, "GET", "/sessions/{session_id}", &status_path, None, &[])
        .await
        .json();
    assert_eq!(ended["session_id"], session.as_str());
    assert_eq!(ended["run_id"], long_run.as_str());
    assert_eq!(ended["state"], "finished", "{ended}");
    assert_eq!(
        (&ended["exit_code"], &ended["reason"]),
        (&json!(143), &json!("stopped"))
    );
    assert!(ended["pid"].is_null(), "{ended}");

    runs(&mut probe, addr, &full_run, &session).await;

    // Refused run requests.
    for route in ["/runs"] {
        probe
            .call(addr, "POST", route, route, Some("{not json"), &[])
            .await
            .assert_error(400);
        let callback = json!({"cli": "codex", "callback_url": "file:///etc/passwd"});
        probe
            .call(addr, "POST", route, route, Some(&callback.to_string()), &[])
            .await
            .assert_error(400);
        probe
            .call(addr, "POST", route, route, Some(&json!({"cli": 5}).to_string()), &[])
            .await
            .assert_error(422);
    }
    // The same Idempotency-Key with another request: 422.
    let key = [("idempotency-key", "openapi-key-1")];
    let first = probe
        .call(
            addr,
            "POST",
            "/runs",
            "/runs",
            Some(&json!({"cli": "codex"}).to_string()),
            &key,
        )
        .await;
    assert_eq!(first.status, 202);
    assert_eq!(
        first.headers["location"],
        format!("/runs/{}", first.json()["run_id"].as_str().unwrap()).as_str()
    );
    probe
        .call(
            addr,
            "POST",
            "/runs",
            "/runs",
            Some(&json!({"cli": "codex", "args": ["x"]}).to_string()),
            &key,
        )
        .await
        .assert_error(422);
    let bad_json = probe.call(addr, "POST", "/run", "/run", Some("{not json"), &[]).await;
    assert_eq!(bad_json.assert_error(400)["error"], "bad_request");
    let mut not_allowed = probe.example_body("minimal");
    not_allowed["cli"] = json!("rm");
    probe
        .call(addr, "POST", "/run", "/run", Some(&not_allowed.to_string()), &[])
        .await
        .assert_error(400);
    for wrong_shape in [
        json!({}),
        json!({"cli": 5}),
        json!({"cli": "args", "args": "x"}),
        json!({"cli": "args", "env": {"A": 1}}),
    ] {
        let reply = probe
            .call(addr, "POST", "/run", "/run", Some(&wrong_shape.to_string()), &[])
            .await;
        assert_eq!(reply.assert_error(422)["error"], "unprocessable", "{wrong_shape}");
    }
    // A file the web UI does not have.
    let missing = probe
        .call(addr, "GET", "/ui/{asset}", "/ui/missing.js", None, &[])
        .await
        .assert_error(404);
    assert_eq!(missing["detail"], "no UI file 'missing.js'");
    // A session id that is not UTF-8 once percent-decoded.
    probe
        .call(addr, "GET", "/sessions/{session_id}", "/sessions/%FF", None, &[])
        .await
        .assert_error(400);
    probe
        .call(
            addr,
            "POST",
            "/sessions/{session_id}/stop",
            "/sessions/%FF/stop",
            None,
            &[],
        )
        .await
        .assert_error(400);
    drop(open);

    // Tokens configured: protected operations want one (401 + WWW-Authenticate), open ones do not.
    let gw = Gateway::start(&[("PATH", &path), ("CLI_LIST", &clis), ("AUTH_TOKENS", TOKEN)]).await;
    for (what, reply) in probe.every_operation(gw.addr, &[]).await {
        let open = guard_of(&what) != Guard::Token;
        assert_eq!(reply.status, if open { 200 } else { 401 }, "{what}");
        if !open {
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    let bearer = format!("Bearer {TOKEN}");
    for (what, reply) in probe.every_operation(gw.addr, &[("authorization", &bearer)]).await {
        assert_eq!(reply.status, example_status(&what), "{what}");
    }
    drop(gw);

    // Client addresses restricted: protected operations are forbidden to this one.
    let gw = Gateway::start(&[("PATH", &path), ("CLI_LIST", &clis), ("ALLOWED_CLIENTS", "10.0.0.0/8")]).await;
    for (what, reply) in probe.every_operation(gw.addr, &[]).await {
        let open = guard_of(&what) == Guard::Open;
        assert_eq!(reply.status, if open { 200 } else { 403 }, "{what}");
    }
    drop(gw);

    // A body over MAX_REQUEST_BYTES.
    let gw = Gateway::start(&[("PATH", &path), ("CLI_LIST", &clis), ("MAX_REQUEST_BYTES", "64")]).await;
    let big = probe.example_body("full").to_string();
    assert!(big.len() > 64);
    for route in ["/run", "/runs"] {
        probe
            .call(gw.addr, "POST", route, route, Some(&big), &[])
            .await
            .assert_error(413);
    }
    drop(gw);

    // A body that does not arrive within REQUEST_READ_TIMEOUT_SECONDS.
    let gw = Gateway::start(&[
        ("PATH", &path),
        ("CLI_LIST", &clis),
        ("REQUEST_READ_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    for route in ["/run", "/runs"] {
        let reply = slow_body_reply(gw.addr, route).await;
        spec.check_reply("POST", route, &reply);
        assert_eq!(reply.assert_error(408)["error"], "request_timeout");
        probe.seen.insert(("POST".into(), route.into(), 408));
    }
    drop(gw);

    // No run slot and no queue: 503 with Retry-After.
    let gw = Gateway::start(&[
        ("PATH", &path),
        ("CLI_LIST", &clis),
        ("MAX_CONCURRENT_RUNS", "1"),
        ("MAX_QUEUED_RUNS", "0"),
    ])
    .await;
    let mut busy = probe
        .open_run(gw.addr, &json!({"cli": "sleep", "args": ["30"]}), &[])
        .await;
    busy.next().await.expect("session frame");
    let reply = probe
        .call(
            gw.addr,
            "POST",
            "/run",
            "/run",
            Some(&probe.example_body("minimal").to_string()),
            &[],
        )
        .await;
    assert_eq!(reply.assert_error(503)["error"], "overloaded");
    assert_eq!(reply.headers["retry-after"], "1");
    let reply = probe
        .call(
            gw.addr,
            "POST",
            "/runs",
            "/runs",
            Some(&probe.example_body("minimal").to_string()),
            &[],
        )
        .await;
    assert_eq!(reply.assert_error(503)["error"], "overloaded");
    drop(busy);
    drop(gw);

    // A run store that stops answering (its PostgreSQL database is dropped under the gateway):
    // every read of records, and a stop of a run that is not running here, is 503 — "not found"
    // would be a guess — and the gateway keeps serving.
    let db = common::pg::fresh_database().await;
    let gw = Gateway::start(&[("PATH", &path), ("CLI_LIST", &clis), ("DATABASE_URL", &db)]).await;
    let mut ended = probe
        .open_run(
            gw.addr,
            &json!({"cli": "exit-code", "args": ["0"], "session_id": "s-gone"}),
            &[],
        )
        .await;
    let run_id = match ended.next().await.expect("session frame") {
        common::Frame::Session { run_id, .. } => run_id,
        other => panic!("{other:?}"),
    };
    ended.until("exit").await;
    common::pg::drop_database(&db).await;
    for (method, pattern, path) in [
        ("GET", "/runs", "/runs".to_string()),
        ("GET", "/runs/{run_id}", format!("/runs/{run_id}")),
        ("GET", "/runs/{run_id}/log", format!("/runs/{run_id}/log")),
        ("GET", "/runs/{run_id}/events", format!("/runs/{run_id}/events")),
        ("GET", "/runs/{run_id}/stream", format!("/runs/{run_id}/stream")),
        ("POST", "/runs/{run_id}/stop", format!("/runs/{run_id}/stop")),
        ("GET", "/sessions/{session_id}", "/sessions/s-gone".to_string()),
        (
            "POST",
            "/sessions/{session_id}/stop",
            "/sessions/s-gone/stop".to_string(),
        ),
    ] {
        let reply = probe.call(gw.addr, method, pattern, &path, None, &[]).await;
        let body = reply.assert_error(503);
        // The database's own words (here: the name of the database that is gone) are for the
        // gateway's log, not for the caller.
        assert_eq!(
            body["detail"], "the run store does not answer (the gateway's log has the cause)",
            "{method} {path}: {body}"
        );
        let database = db.rsplit('/').next().unwrap();
        assert!(!body.to_string().contains(database), "{method} {path}: {body}");
    }
    assert_eq!(request(gw.addr, "GET", "/healthz", None, &[]).await.status, 200);
    drop(gw);

    // Docker mode whose engine (the real one) answers but lacks the image: not ready.
    let instance = format!("cligate-openapi-{}", std::process::id());
    let gw = Gateway::start(&[
        ("CODEX_DOCKER_IMAGE", "cligate-openapi-missing:latest"),
        ("CLIGATE_INSTANCE", &instance),
    ])
    .await;
    let reply = probe.call(gw.addr, "GET", "/readyz", "/readyz", None, &[]).await;
    assert_eq!(reply.assert_error(503)["error"], "unavailable");
    drop(gw);

    // A project: the preview examples answer 200, and the documented refusals.
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        common::git_in(repo.path(), "dev", args);
    };
    git(&["init", "--quiet", "work"]);
    std::fs::create_dir_all(repo.path().join("work/src")).unwrap();
    std::fs::write(repo.path().join("work/src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
    std::fs::write(repo.path().join("work/logo.png"), b"\x89PNG\0\0").unwrap();
    git(&["-C", "work", "add", "."]);
    git(&["-C", "work", "commit", "--quiet", "-m", "seed"]);
    git(&["clone", "--quiet", "--bare", "work", "origin.git"]);
    let projects = repo.path().join("projects.toml");
    std::fs::write(
        &projects,
        format!(
            "[projects.myproj]\nurl = \"{}\"\nbase = \"dev\"\n[projects.gone]\nurl = \"{}\"\n",
            repo.path().join("origin.git").display(),
            repo.path().join("no-such-repo.git").display()
        ),
    )
    .unwrap();
    let gw = Gateway::start(&[
        ("PATH", &path),
        ("CLI_LIST", &clis),
        ("PROJECTS_FILE", projects.to_str().unwrap()),
    ])
    .await;
    for (what, reply) in probe.every_operation(gw.addr, &[]).await {
        if what.contains("/projects") {
            assert_eq!(reply.status, 200, "{what}");
        }
    }
    for (pattern, path, status) in [
        ("/projects/{project_id}/tree", "/projects/gone/tree", 503),
        ("/projects/{project_id}/file", "/projects/gone/file?path=x", 503),
        ("/projects/{project_id}/tree", "/projects/myproj/tree?path=../x", 400),
        ("/projects/{project_id}/tree", "/projects/myproj/tree?ref=nope", 404),
        (
            "/projects/{project_id}/file",
            "/projects/myproj/file?path=/etc/passwd",
            400,
        ),
        (
            "/projects/{project_id}/file",
            "/projects/myproj/file?path=missing.rs",
            404,
        ),
        (
            "/projects/{project_id}/file",
            "/projects/myproj/file?path=logo.png",
            415,
        ),
    ] {
        probe
            .call(gw.addr, "GET", pattern, path, None, &[])
            .await
            .assert_error(status);
    }
    drop(gw);

    // Every status the document lists was produced above.
    let mut missing = Vec::new();
    for (method, pattern, _) in cligate::api::ROUTES {
        for status in spec.statuses(method, pattern) {
            if !probe.seen.contains(&(method.to_string(), pattern.to_string(), status)) {
                missing.push(format!("{method} {pattern} {status}"));
            }
        }
    }
    assert!(missing.is_empty(), "documented but never produced: {missing:?}");
}

/// Who may reach the operation named `what` ("GET /runs").
fn guard_of(what: &str) -> Guard {
    cligate::api::ROUTES
        .iter()
        .find(|(m, p, _)| format!("{m} {p}") == what)
        .map(|(_, _, g)| *g)
        .unwrap_or_else(|| panic!("no route {what}"))
}

/// The status of an operation called with its examples when the example session, run and project
/// do not exist.
fn example_status(what: &str) -> u16 {
    if what.contains("/sessions/") || what.contains("/runs/") || what.contains("/projects/") {
        404
    } else if what == "POST /runs" {
        202
    } else {
        200
    }
}

fn run_id_of(stream: &RunStream) -> String {
    stream.headers["x-cligate-run-id"].to_str().unwrap().to_string()
}

/// `/runs` and the operations on one run, `finished` being a finished run of `session`.
async fn runs(probe: &mut Probe<'_>, addr: SocketAddr, finished: &str, session: &str) {
    // The list, filtered and paged.
    let list = probe.call(addr, "GET", "/runs", "/runs", None, &[]).await.json();
    let ids: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&finished), "{list}");
    let filtered = format!("/runs?state=finished&cli=codex&session_id={session}");
    let list = probe.call(addr, "GET", "/runs", &filtered, None, &[]).await.json();
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["runs"][0]["run_id"], finished);
    assert!(list["next_cursor"].is_null(), "{list}");
    let first = probe
        .call(addr, "GET", "/runs", "/runs?limit=1", None, &[])
        .await
        .json();
    assert_eq!(first["runs"].as_array().unwrap().len(), 1, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let next = format!("/runs?limit=1&cursor={cursor}");
    let second = probe.call(addr, "GET", "/runs", &next, None, &[]).await.json();
    assert_ne!(second["runs"][0]["run_id"], first["runs"][0]["run_id"], "{second}");
    for bad in ["state=done", "limit=0", "limit=1001", "cursor=nope"] {
        let path = format!("/runs?{bad}");
        probe
            .call(addr, "GET", "/runs", &path, None, &[])
            .await
            .assert_error(400);
    }

    // The record.
    let record_path = format!("/runs/{finished}");
    let record = probe
        .call(addr, "GET", "/runs/{run_id}", &record_path, None, &[])
        .await
        .json();
    assert_eq!(record["run_id"], finished);
    assert_eq!(record["session_id"], session);
    assert_eq!(record["state"], "finished");
    assert_eq!((&record["exit_code"], &record["reason"]), (&json!(0), &json!("exited")));

    // The log, whole, then from its end; its frames are the run's.
    let log_path = format!("/runs/{finished}/log");
    let log = probe
        .call(addr, "GET", "/runs/{run_id}/log", &log_path, None, &[])
        .await
        .json();
    let content = log["content"].as_str().unwrap().to_string();
    let frames: Vec<Value> = content.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for frame in &frames {
        probe
            .spec
            .assert_valid(probe.spec.schema("Frame"), frame, "a frame of the log");
    }
    assert_eq!(frames[0]["run_id"], finished);
    assert_eq!(frames.last().unwrap()["type"], "exit");
    assert_eq!((log["offset"].as_u64(), log["eof"].as_bool()), (Some(0), Some(true)));
    let size = log["size"].as_u64().unwrap();
    assert_eq!((log["next_offset"].as_u64(), content.len() as u64), (Some(size), size));
    let tail_path = format!("/runs/{finished}/log?offset={size}");
    let tail = probe
        .call(addr, "GET", "/runs/{run_id}/log", &tail_path, None, &[])
        .await
        .json();
    assert_eq!(
        (tail["content"].as_str(), tail["eof"].as_bool()),
        (Some(""), Some(true))
    );
    // The events: the `args` fixture prints no JSON objects.
    let events_path = format!("/runs/{finished}/events");
    let events = probe
        .call(addr, "GET", "/runs/{run_id}/events", &events_path, None, &[])
        .await
        .json();
    assert_eq!(events["events"], json!([]));
    assert_eq!(events["content"], content.as_str());
    // Offsets that do not start a frame, are past the end, or are not numbers; windows of nothing.
    let first_frame = content.find('\n').unwrap() + 1;
    for op in ["log", "events"] {
        let pattern = format!("/runs/{{run_id}}/{op}");
        for bad in [
            "offset=1".to_string(),
            format!("offset={}", size + 1),
            "offset=-1".into(),
            "max_bytes=0".into(),
            "max_bytes=4194305".into(),
        ] {
            let path = format!("/runs/{finished}/{op}?{bad}");
            probe
                .call(addr, "GET", &pattern, &path, None, &[])
                .await
                .assert_error(400);
        }
        let path = format!("/runs/{finished}/{op}?offset={first_frame}&max_bytes=1");
        let page = probe.call(addr, "GET", &pattern, &path, None, &[]).await.json();
        assert_eq!(page["offset"], first_frame, "{page}");
    }

    // The stream: the log's bytes from an offset (any, not only a frame start) to the exit frame.
    let stream_path = format!("/runs/{finished}/stream");
    let stream = probe
        .call(addr, "GET", "/runs/{run_id}/stream", &stream_path, None, &[])
        .await;
    assert_eq!(stream.body, content.as_bytes());
    assert_eq!(stream.headers["x-cligate-run-id"], finished);
    assert_eq!(stream.headers["cache-control"], "no-cache");
    let resumed_path = format!("/runs/{finished}/stream?offset={first_frame}");
    let resumed = probe
        .call(addr, "GET", "/runs/{run_id}/stream", &resumed_path, None, &[])
        .await;
    assert_eq!(resumed.body, &content.as_bytes()[first_frame..]);
    for bad in [format!("offset={}", size + 1), "offset=x".into()] {
        let path = format!("/runs/{finished}/stream?{bad}");
        probe
            .call(addr, "GET", "/runs/{run_id}/stream", &path, None, &[])
            .await
            .assert_error(400);
    }

    // Stopping: a running run (200), then the same one finished (404).
    let stream = probe
        .open_run(addr, &json!({"cli": "sleep", "args": ["30"]}), &[])
        .await;
    let sleeping = run_id_of(&stream);
    let record_path = format!("/runs/{sleeping}");
    let started = Instant::now();
    loop {
        let record = probe
            .call(addr, "GET", "/runs/{run_id}", &record_path, None, &[])
            .await
            .json();
        if record["state"] == "running" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop_path = format!("/runs/{sleeping}/stop");
    let stopped = probe
        .call(addr, "POST", "/runs/{run_id}/stop", &stop_path, None, &[])
        .await;
    assert_eq!(stopped.json(), json!({"run_id": sleeping, "status": "stopped"}));
    let frames = probe.finish_run(stream).await;
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "exit", "code": 143, "reason": "stopped"})
    );
    probe
        .call(addr, "POST", "/runs/{run_id}/stop", &stop_path, None, &[])
        .await
        .assert_error(404);

    // Run ids that are not UTF-8 once percent-decoded.
    for (method, pattern) in [
        ("GET", "/runs/{run_id}"),
        ("GET", "/runs/{run_id}/log"),
        ("GET", "/runs/{run_id}/events"),
        ("GET", "/runs/{run_id}/stream"),
        ("POST", "/runs/{run_id}/stop"),
    ] {
        let path = pattern.replace("{run_id}", "%FF");
        probe
            .call(addr, method, pattern, &path, None, &[])
            .await
            .assert_error(400);
    }
}

/// The reply to a `POST /run` that declares a 1000-byte body and sends one byte, over a raw socket
/// (an HTTP client library would send the whole body).
async fn slow_body_reply(addr: SocketAddr, route: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {route} HTTP/1.1\r\nhost: cligate.test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("a reply within 10 s")
        .unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse::<u16>().unwrap();
    let mut headers = hyper::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    Reply {
        status: hyper::StatusCode::from_u16(status).unwrap(),
        headers,
        body: bytes::Bytes::copy_from_slice(&raw[end + 4..]),
    }
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}
