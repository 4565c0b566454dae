//! The web UI's files as the gateway serves them: content types, the security headers on every
//! one, 404 JSON for unknown names, who may fetch them (no token needed, `ALLOWED_CLIENTS`
//! applies), and that the files themselves keep to the page's rules (no inline script or style,
//! no HTML built from strings). The page in a real browser: tests/ui/ui.test.mjs.

mod common;

use common::{Gateway, request};

const TOKEN: &str = "ui-rust-test-token-0123456789";

fn ui_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/src/ui/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn assert_guarded(reply: &common::Reply, what: &str) {
    let h = &reply.headers;
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
}

#[tokio::test]
async fn the_page_and_every_file_are_served_with_their_type_and_the_security_headers() {
    let gw = Gateway::start(&[]).await;
    let page = gw.get("/ui").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_guarded(&page, "/ui");
    assert_eq!(page.body, ui_file("index.html"));
    let mut names: Vec<&str> = cligate::api::ui::asset_names().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "anser.js",
            "api.js",
            "app.js",
            "dom.js",
            "icon.svg",
            "list.js",
            "run.js",
            "start.js",
            "style.css",
            "terminal.js"
        ]
    );
    for name in names {
        let reply = gw.get(&format!("/ui/{name}")).await;
        assert_eq!(reply.status, 200, "{name}");
        let want = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected file type {other}"),
        };
        assert_eq!(reply.headers["content-type"], want, "{name}");
        assert_guarded(&reply, name);
        let on_disk = if name == "anser.js" {
            ui_file("vendor/anser.js")
        } else {
            ui_file(name)
        };
        assert_eq!(reply.body, on_disk, "{name} is the file in src/ui");
    }
    // HEAD answers like GET without the body.
    let head = request(gw.addr, "HEAD", "/ui/app.js", None, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn unknown_files_and_other_methods_are_refused_with_the_error_shape() {
    let gw = Gateway::start(&[]).await;
    for path in [
        "/ui/missing.js",
        "/ui/",
        "/ui/vendor/anser.js",
        "/ui/..%2Fopenapi.json",
        "/ui/%FF",
        "/ui/index.html/x",
    ] {
        gw.get(path).await.assert_error(404);
    }
    let body = gw.get("/ui/missing.js").await.assert_error(404);
    assert_eq!(body["detail"], "no UI file 'missing.js'");
    let post = gw.post("/ui", "{}").await;
    post.assert_error(405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    gw.post("/ui/app.js", "{}").await.assert_error(405);
    // The gateway goes on serving.
    assert_eq!(gw.get("/ui").await.status, 200);
}

#[tokio::test]
async fn the_files_need_no_token_but_the_data_does() {
    let gw = Gateway::start(&[("AUTH_TOKENS", TOKEN)]).await;
    assert_eq!(gw.get("/ui").await.status, 200);
    assert_eq!(gw.get("/ui/app.js").await.status, 200);
    for path in ["/runs", "/clis", "/models"] {
        gw.get(path).await.assert_error(401);
    }
    let bearer = format!("Bearer {TOKEN}");
    let with = request(gw.addr, "GET", "/runs", None, &[("authorization", &bearer)]).await;
    assert_eq!(with.status, 200);
}

#[tokio::test]
async fn allowed_clients_apply_to_the_ui() {
    let outside = Gateway::start(&[("ALLOWED_CLIENTS", "10.0.0.0/8")]).await;
    for path in ["/ui", "/ui/app.js", "/ui/missing.js"] {
        let body = outside.get(path).await.assert_error(403);
        assert_eq!(body["error"], "forbidden", "{path}");
    }
    // Health stays open; the address check comes before the file lookup.
    assert_eq!(outside.get("/healthz").await.status, 200);
    let inside = Gateway::start(&[("ALLOWED_CLIENTS", "127.0.0.0/8"), ("AUTH_TOKENS", TOKEN)]).await;
    assert_eq!(inside.get("/ui").await.status, 200);
    assert_eq!(inside.get("/ui/style.css").await.status, 200);
}

/// The page's own rules, checked on its source: the CSP would block inline code and style in a
/// browser anyway (the browser tests fail on any violation); this names the file and line.
#[test]
fn the_files_have_no_inline_code_and_build_no_html_from_strings() {
    let index = ui_file("index.html");
    for (i, line) in index.lines().enumerate() {
        let l = line.to_ascii_lowercase();
        assert!(!l.contains("<style"), "index.html:{}: inline style", i + 1);
        assert!(!l.contains(" style="), "index.html:{}: style attribute", i + 1);
        assert!(!l.contains(" on"), "index.html:{}: event handler attribute?", i + 1);
        if l.contains("<script") {
            assert!(l.contains(" src=\"/ui/"), "index.html:{}: inline script", i + 1);
        }
        for reference in ["src=\"", "href=\""] {
            if let Some(at) = l.find(reference) {
                let target = &l[at + reference.len()..];
                let target = &target[..target.find('"').unwrap()];
                assert!(
                    target.starts_with("/ui/") || target.starts_with('#'),
                    "index.html:{}: {target} is not one of the page's own files",
                    i + 1
                );
            }
        }
    }
    for name in [
        "app.js",
        "api.js",
        "dom.js",
        "list.js",
        "run.js",
        "start.js",
        "terminal.js",
    ] {
        let code = ui_file(name);
        for (i, line) in code.lines().enumerate() {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute('style'",
                "localStorage.setItem",
            ] {
                assert!(!line.contains(banned), "{name}:{}: {banned}", i + 1);
            }
            // The token never goes into a URL.
            if line.contains("token") && (line.contains("?token") || line.contains("&token")) {
                panic!("{name}:{}: a token in a URL", i + 1);
            }
        }
        for import in code.lines().filter(|l| l.starts_with("import ")) {
            let from = import.rsplit("from '").next().unwrap().trim_end_matches("';");
            let file = from.trim_start_matches("./");
            assert!(
                cligate::api::ui::asset_names().any(|n| n == file),
                "{name}: imports {from}, which is not served"
            );
        }
    }
}
