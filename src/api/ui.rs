//! `GET /ui` and `GET /ui/{asset}`: the operator's web page, served from files embedded in the
//! binary (no CDN, nothing to deploy beside it). The files hold no data — the page reads the
//! JSON API with the operator's bearer token — so they need no token, only an allowed address.
//! Every answer forbids inline script and style, framing and content sniffing.

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::error::ApiError;
use crate::body::Body;

/// The page's Content-Security-Policy: its own files only, nothing inline, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The embedded files: name under `/ui/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../ui/app.js")),
    ("api.js", JS, include_str!("../ui/api.js")),
    ("list.js", JS, include_str!("../ui/list.js")),
    ("run.js", JS, include_str!("../ui/run.js")),
    ("start.js", JS, include_str!("../ui/start.js")),
    ("terminal.js", JS, include_str!("../ui/terminal.js")),
    ("dom.js", JS, include_str!("../ui/dom.js")),
    // Third-party, vendored by `./build.sh ui-assets`; served flat like the rest.
    ("anser.js", JS, include_str!("../ui/vendor/anser.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../ui/style.css")),
    ("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// The page itself.
const INDEX: &str = include_str!("../ui/index.html");

/// `GET /ui`.
pub fn index() -> Response<Body> {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{asset}`; an unknown name is 404.
pub fn asset(name: &str) -> Result<Response<Body>, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, content)| page(content_type, content))
        .ok_or_else(|| ApiError::NotFound(format!("no UI file '{}'", name.escape_debug())))
}

/// The names of the embedded files (for the tests).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(n, _, _)| *n)
}

fn page(content_type: &'static str, content: &'static str) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        // Revalidated on every load, so a new binary's page is never mixed with old modules.
        .header(CACHE_CONTROL, "no-cache")
        .body(Body::full(content))
        .expect("static headers are valid");
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
