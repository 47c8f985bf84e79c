//! Each layer alone, over `service_fn` inner services.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_lb::layer::{
    remove_hop_by_hop_headers, strip_hop_by_hop_response, Direct, DirectorLayer, FailurePolicy,
    ForwardedFor, HostHeader, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::{AffinityKey, ClientAddr};
use tower_lb::{Backend, Error, HookStage, LoadBalancer, Member, Strategy};

type Req = Request<()>;

fn direct(backend: &str, uri: &str, headers: &[(&str, &str)], director: ProxyDirector) -> Req {
    try_direct(backend, uri, headers, director).unwrap()
}

/// The request as `director` rewrites it for `backend`, or its error; the
/// client is 192.0.2.7.
fn try_direct(
    backend: &str,
    uri: &str,
    headers: &[(&str, &str)],
    director: ProxyDirector,
) -> Result<Req, Error> {
    let mut req = picked(backend, uri, headers);
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:4444".parse().unwrap()));
    run(director, req)
}

/// A request for `uri` with `headers`, `backend` picked for it.
/// Without a `host` among `headers` (nor an authority in `uri`) the
/// request gets `host: front.example`, as every HTTP/1.1 request has one.
fn picked(backend: &str, uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut b = Request::builder().uri(uri);
    if !uri.contains("://") && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "front.example");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut()
        .insert(Member::new(Backend::new(backend).unwrap()));
    req
}

/// `req` as `director` rewrites it, or its error.
fn run(mut director: ProxyDirector, mut req: Req) -> Result<Req, Error> {
    match director.direct(&mut req) {
        Ok(()) => Ok(req),
        Err(error) => Err(*error.downcast::<Error>().expect("a tower_lb::Error")),
    }
}

/// The `reason` of a `BadRequest`; panics on any other outcome.
fn bad_request(result: Result<Req, Error>) -> String {
    match result {
        Err(Error::BadRequest { reason }) => reason,
        Err(other) => panic!("expected BadRequest, got {other:?}"),
        Ok(req) => panic!("expected BadRequest, got a request for {}", req.uri()),
    }
}

fn rewritten(backend: &str, uri: &str) -> String {
    direct(backend, uri, &[], ProxyDirector::new())
        .uri()
        .to_string()
}

#[test]
fn director_joins_paths_with_exactly_one_slash() {
    let cases = [
        ("http://b:1", "/x", "http://b:1/x"),
        ("http://b:1/", "/x", "http://b:1/x"),
        ("http://b:1/api", "/x", "http://b:1/api/x"),
        ("http://b:1/api/", "/x", "http://b:1/api/x"),
        ("http://b:1/api", "/", "http://b:1/api/"),
        ("http://b:1/api/", "/", "http://b:1/api/"),
        ("http://b:1/a/b", "/c/d/", "http://b:1/a/b/c/d/"),
        ("https://b:1/api", "/x", "https://b:1/api/x"),
    ];
    for (backend, uri, want) in cases {
        assert_eq!(rewritten(backend, uri), want, "{backend} + {uri}");
    }
}

#[test]
fn director_merges_query_strings() {
    let cases = [
        ("http://b/", "/x?a=1", "http://b/x?a=1"),
        ("http://b/?k=v", "/x", "http://b/x?k=v"),
        ("http://b/?k=v", "/x?a=1", "http://b/x?k=v&a=1"),
        ("http://b/p?k=v", "/x?a=1&b=2", "http://b/p/x?k=v&a=1&b=2"),
        ("http://b/", "/x?", "http://b/x?"),
    ];
    for (backend, uri, want) in cases {
        assert_eq!(rewritten(backend, uri), want, "{backend} + {uri}");
    }
}

#[test]
fn director_replaces_an_absolute_request_uri_with_the_backend() {
    // A forward-proxy style absolute URI must not choose the destination.
    assert_eq!(
        rewritten("http://10.0.0.1:80", "http://evil.example:9999/x?q=1"),
        "http://10.0.0.1:80/x?q=1"
    );
}

#[test]
fn director_host_header_is_preserved_backend_or_fixed() {
    let h = [("host", "front.example")];
    let keep = direct("http://10.0.0.1:81", "/", &h, ProxyDirector::new());
    assert_eq!(keep.headers()["host"], "front.example");
    let backend = direct(
        "http://10.0.0.1:81",
        "/",
        &h,
        ProxyDirector::new().host(HostHeader::Backend),
    );
    assert_eq!(backend.headers()["host"], "10.0.0.1:81");
    let fixed = direct(
        "http://10.0.0.1:81",
        "/",
        &h,
        ProxyDirector::new().host(HostHeader::Fixed("api.internal".parse().unwrap())),
    );
    assert_eq!(fixed.headers()["host"], "api.internal");
    // HTTP/2 style: the authority is in the URI, not in a Host header.
    let h2 = direct(
        "http://10.0.0.1:81",
        "http://front.example/x",
        &[],
        ProxyDirector::new(),
    );
    assert_eq!(h2.headers()["host"], "front.example");
}

#[test]
fn director_appends_the_client_to_x_forwarded_for_in_append_mode() {
    let append = || ProxyDirector::new().forwarded_for(ForwardedFor::Append);
    let none = direct("http://b", "/", &[], append());
    assert_eq!(none.headers()["x-forwarded-for"], "192.0.2.7");
    let one = direct(
        "http://b",
        "/",
        &[("x-forwarded-for", "203.0.113.1")],
        append(),
    );
    assert_eq!(one.headers()["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
    let two = direct(
        "http://b",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.1, 10.1.1.1"),
            ("x-forwarded-for", "10.2.2.2"),
        ],
        append(),
    );
    assert_eq!(
        two.headers()
            .get_all("x-forwarded-for")
            .iter()
            .collect::<Vec<_>>(),
        ["203.0.113.1, 10.1.1.1, 10.2.2.2, 192.0.2.7"]
    );
}

#[test]
fn director_replaces_forged_x_forwarded_host_and_proto() {
    let req = direct(
        "http://b",
        "/",
        &[
            ("host", "front.example"),
            ("x-forwarded-host", "forged.example"),
            ("x-forwarded-proto", "https"),
        ],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["x-forwarded-host"], "front.example");
    assert_eq!(req.headers()["x-forwarded-proto"], "http");
    let tls = direct(
        "http://b",
        "/",
        &[("host", "f")],
        ProxyDirector::new().https(true),
    );
    assert_eq!(tls.headers()["x-forwarded-proto"], "https");
}

#[test]
fn a_client_cannot_claim_https_with_an_absolute_target() {
    let d = || ProxyDirector::new().forwarded(true);
    let req = direct("http://b", "https://front.example/x", &[], d());
    assert_eq!(req.headers()["x-forwarded-proto"], "http");
    assert!(req.headers()["forwarded"]
        .to_str()
        .unwrap()
        .ends_with(";proto=http"));
}

#[test]
fn an_absolute_target_authority_wins_over_the_host_header() {
    // RFC 9112 §3.2.2: the request-target's authority replaces Host.
    let req = direct(
        "http://b",
        "http://a.example/x",
        &[("host", "b.example")],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["host"], "a.example");
    assert_eq!(req.headers()["x-forwarded-host"], "a.example");
}

#[test]
fn more_than_one_host_line_is_a_bad_request() {
    // RFC 9112 §3.2: the backend and X-Forwarded-Host could disagree.
    let hosts = [("host", "front.example"), ("host", "evil.example")];
    for director in [
        ProxyDirector::new(),
        ProxyDirector::new().host(HostHeader::Backend),
        ProxyDirector::new().x_forwarded(false).forwarded(true),
    ] {
        let result = try_direct("http://b", "/", &hosts, director);
        assert_eq!(
            bad_request(result),
            "the request has more than one Host header line"
        );
    }
    // Even when an absolute-form target's authority would replace them.
    let absolute = try_direct(
        "http://b",
        "http://a.example/",
        &hosts,
        ProxyDirector::new(),
    );
    assert_eq!(
        bad_request(absolute),
        "the request has more than one Host header line"
    );
    let one = direct("http://b", "/", &hosts[..1], ProxyDirector::new());
    assert_eq!(one.headers()["host"], "front.example");
}

#[test]
fn an_absolute_target_userinfo_never_reaches_host_or_forwarding_headers() {
    let d = || ProxyDirector::new().forwarded(true);
    let cases = [
        (
            "http://admin:hunter2@evil.example/x",
            "evil.example",
            "evil.example",
        ),
        (
            "http://admin@evil.example:8080/x",
            "evil.example:8080",
            "\"evil.example:8080\"",
        ),
        ("http://a@b@evil.example/x", "evil.example", "evil.example"),
        (
            "http://u:p@[2001:db8::1]:81/x",
            "[2001:db8::1]:81",
            "\"[2001:db8::1]:81\"",
        ),
    ];
    for (uri, host, forwarded_host) in cases {
        let req = direct("http://10.0.0.1", uri, &[("host", "front.example")], d());
        assert_eq!(req.uri(), "http://10.0.0.1/x", "{uri}");
        assert_eq!(req.headers()["host"], host, "{uri}");
        assert_eq!(req.headers()["x-forwarded-host"], host, "{uri}");
        assert_eq!(
            req.headers()["forwarded"],
            format!("for=192.0.2.7;host={forwarded_host};proto=http").as_str(),
            "{uri}"
        );
    }
}

#[test]
fn connection_cannot_make_the_proxy_drop_host() {
    let req = direct(
        "http://b",
        "/",
        &[
            ("host", "front.example"),
            ("connection", "host, x-a"),
            ("x-a", "1"),
        ],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["host"], "front.example");
    assert!(req.headers().get("x-a").is_none());
}

/// `/` with `headers`, as `director` rewrites it for `http://b` when the
/// request has no `ClientAddr` (the server did not say who the peer is).
fn direct_without_client_addr(headers: &[(&str, &str)], director: ProxyDirector) -> Req {
    run(director, picked("http://b", "/", headers)).unwrap()
}

#[test]
fn without_a_client_address_an_incoming_x_forwarded_for_is_dropped() {
    let req = direct_without_client_addr(&[("x-forwarded-for", "6.6.6.6")], ProxyDirector::new());
    assert!(req.headers().get("x-forwarded-for").is_none());
}

#[test]
fn dot_segments_cannot_climb_out_of_the_backend_prefix() {
    let cases = [
        ("/../internal/secret", "http://b/api/internal/secret"),
        ("/%2e%2e/internal", "http://b/api/internal"),
        ("/a/./b/../c", "http://b/api/a/c"),
        ("/a/..", "http://b/api/"),
        ("/..", "http://b/api/"),
        ("/a/.%2E/../../x?q=1", "http://b/api/x?q=1"),
        ("/plain/path", "http://b/api/plain/path"),
    ];
    for (uri, want) in cases {
        assert_eq!(rewritten("http://b/api", uri), want, "{uri}");
    }
}

#[test]
fn dot_segments_behind_encoded_slashes_or_backslashes_are_a_bad_request() {
    // A backend that decodes %2F, or reads `\` as `/`, before resolving
    // dots would climb out of /api.
    let refused = [
        "/..%2f..%2fadmin",
        "/%2e%2e%2fadmin",
        "/..\\admin",
        "/..%5cadmin",
        "/a/%2E%2E%5Cb",
        "/x%2F.%2Fy",
        "/.%2E%2Fsecret?q=1",
        "/a\\..\\b",
        "/a/..%2F",
        "/a/b/../..%2f",
    ];
    for uri in refused {
        let result = try_direct("http://b/api", uri, &[], ProxyDirector::new());
        assert_eq!(
            bad_request(result),
            "the request path has a `.` or `..` segment that a backend could resolve out of its \
             prefix (behind an encoded slash or a backslash, or before `;` parameters)",
            "{uri}"
        );
    }
    // Encoded slashes and backslashes without dot segments pass unchanged.
    let passed = [
        (
            "/projects/group%2Fname",
            "http://b/api/projects/group%2Fname",
        ),
        ("/a%5Cb\\c", "http://b/api/a%5Cb\\c"),
        ("/files/...%2fx", "http://b/api/files/...%2fx"),
        ("/v1/.well-known%2Fx", "http://b/api/v1/.well-known%2Fx"),
        ("/a..%2f..b", "http://b/api/a..%2f..b"),
        ("/%2e%2e/x%2Fy", "http://b/api/x%2Fy"),
    ];
    for (uri, want) in passed {
        assert_eq!(rewritten("http://b/api", uri), want, "{uri}");
    }
    // Without a prefix there is no boundary to guard: the path goes as the
    // client sent it (nginx's proxy_pass without a URI part, Go).
    assert_eq!(
        rewritten("http://b", "/..%2f..%2fadmin"),
        "http://b/..%2f..%2fadmin"
    );
}

/// The path a lenient backend would serve: `%2F`, `%5C` and `\` read as
/// `/`, `%2E` as `.`, then dot segments resolved (RFC 3986 §5.2.4).
fn as_a_lenient_backend_reads_it(path: &str) -> Vec<String> {
    let mut decoded = path.replace('\\', "/");
    for (from, to) in [("%2f", "/"), ("%2F", "/"), ("%5c", "/"), ("%5C", "/")] {
        decoded = decoded.replace(from, to);
    }
    let decoded = decoded.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg.to_owned()),
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn no_encoding_of_dots_and_slashes_climbs_out_of_the_prefix(
        pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "/", "\\", "%2f", "%2F", "%5c", "%5C", ".", "%2e", "%2E", "..", "a",
            ]),
            0..12,
        )
    ) {
        let uri = format!("/{}", pieces.concat());
        match try_direct("http://b/api", &uri, &[], ProxyDirector::new()) {
            Ok(req) => {
                let path = req.uri().path();
                proptest::prop_assert!(path.starts_with("/api/"), "{} -> {}", uri, path);
                let served = as_a_lenient_backend_reads_it(path);
                proptest::prop_assert_eq!(served.first().map(String::as_str), Some("api"), "{} -> {}", uri, path);
            }
            Err(Error::BadRequest { .. }) => {}
            Err(other) => proptest::prop_assert!(false, "{}: {:?}", uri, other),
        }
    }
}

/// The `(len, max)` of a `UriTooLong`; panics on any other outcome.
fn uri_too_long(result: Result<Req, Error>) -> (usize, usize) {
    match result {
        Err(Error::UriTooLong { len, max }) => (len, max),
        Err(other) => panic!("expected UriTooLong, got {other:?}"),
        Ok(req) => panic!("expected UriTooLong, got {} bytes", req.uri().path().len()),
    }
}

#[test]
fn a_path_the_backend_prefix_makes_too_long_is_414_not_a_backend_error() {
    // `http` takes a path and query of up to 65,534 bytes; "/api" adds 4.
    const MAX: usize = 65_534;
    assert!(format!("/{}", "a".repeat(MAX - 1))
        .parse::<http::Uri>()
        .is_ok());
    assert!(format!("/{}", "a".repeat(MAX))
        .parse::<http::Uri>()
        .is_err());

    let path = |len: usize| format!("/{}", "a".repeat(len - 1));
    let at_limit = direct("http://b/api", &path(MAX - 4), &[], ProxyDirector::new());
    assert_eq!(at_limit.uri().path().len(), MAX);
    let over = try_direct("http://b/api", &path(MAX - 3), &[], ProxyDirector::new());
    assert_eq!(uri_too_long(over), (MAX + 1, MAX));
    // A backend query lengthens it too: "?k=v" adds 4.
    let query = try_direct("http://b/?k=v", &path(MAX - 3), &[], ProxyDirector::new());
    assert_eq!(uri_too_long(query), (MAX + 1, MAX));
    let err = try_direct("http://b/api", &path(MAX - 3), &[], ProxyDirector::new()).unwrap_err();
    assert_eq!(err.status_code(), StatusCode::URI_TOO_LONG);
    // Without a prefix or query the path goes as it came, at any length
    // `http` took.
    let plain = direct("http://b", &path(MAX), &[], ProxyDirector::new());
    assert_eq!(plain.uri().path().len(), MAX);
}

#[test]
fn an_empty_backend_query_adds_no_question_mark() {
    assert_eq!(rewritten("http://b/?", "/x"), "http://b/x");
    assert_eq!(rewritten("http://b/p?", "/x?a=1"), "http://b/p/x?a=1");
}

#[test]
fn director_can_skip_x_forwarded_headers() {
    let req = direct(
        "http://b",
        "/",
        &[("host", "f")],
        ProxyDirector::new().x_forwarded(false),
    );
    assert!(req.headers().get("x-forwarded-for").is_none());
    assert!(req.headers().get("x-forwarded-host").is_none());
}

#[test]
fn with_x_forwarded_off_a_clients_own_x_forwarded_headers_are_removed() {
    let forged = [
        ("host", "front"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "kept"),
    ];
    let req = direct(
        "http://b",
        "/",
        &forged,
        ProxyDirector::new().x_forwarded(false),
    );
    for name in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"] {
        assert!(req.headers().get(name).is_none(), "{name}");
    }
    assert_eq!(req.headers()["x-request-id"], "kept");
}

#[test]
fn a_host_header_that_is_not_a_host_and_port_is_a_bad_request() {
    for host in [
        "a b",
        "evil.example/path",
        "user@evil.example",
        "a\\b",
        "a?b",
        "a#b",
        " front",
        "front\t",
    ] {
        let result = try_direct("http://b", "/", &[("host", host)], ProxyDirector::new());
        assert_eq!(
            bad_request(result),
            "the request's Host header is not a host and port",
            "{host:?}"
        );
    }
    for host in [
        "front.example",
        "front.example:8443",
        "[::1]:80",
        "127.0.0.1",
    ] {
        let req = direct("http://b", "/", &[("host", host)], ProxyDirector::new());
        assert_eq!(req.headers()["host"], host);
    }
    // An empty Host is no Host: a 400 for HTTP/1.1 (see below).
}

#[test]
fn dot_segments_with_path_parameters_are_a_bad_request_under_a_prefix() {
    // Tomcat and other servlet containers drop `;parameters` and then read
    // `..;x` as `..`.
    for uri in [
        "/..;/admin",
        "/a/..;jsessionid=1/..;/x",
        "/.;x/y",
        "/%2e%2e;/admin",
    ] {
        let result = try_direct("http://b/api", uri, &[], ProxyDirector::new());
        assert_eq!(
            bad_request(result),
            "the request path has a `.` or `..` segment that a backend could resolve out of its \
             prefix (behind an encoded slash or a backslash, or before `;` parameters)",
            "{uri}"
        );
    }
    // Parameters on ordinary segments pass.
    assert_eq!(
        rewritten("http://b/api", "/a;v=1/b..;c"),
        "http://b/api/a;v=1/b..;c"
    );
}

#[test]
fn forwarded_in_append_mode_keeps_the_elements_of_every_earlier_line() {
    let req = direct(
        "http://b",
        "/",
        &[
            ("host", "front"),
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.50"),
        ],
        ProxyDirector::new()
            .forwarded(true)
            .forwarded_for(ForwardedFor::Append),
    );
    assert_eq!(
        req.headers()
            .get_all("forwarded")
            .iter()
            .collect::<Vec<_>>(),
        ["for=6.6.6.6, for=203.0.113.50, for=192.0.2.7;host=front;proto=http"]
    );
}

#[test]
fn an_incoming_forwarded_header_is_removed_when_forwarded_is_off() {
    let forged = [
        ("host", "front"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("forwarded", "for=203.0.113.50;host=admin.internal"),
    ];
    for director in [
        ProxyDirector::new(),
        ProxyDirector::new().x_forwarded(false),
    ] {
        let req = direct("http://b", "/", &forged, director);
        assert!(req.headers().get("forwarded").is_none());
    }
}

#[test]
fn without_a_client_address_forwarded_holds_only_this_hops_element() {
    // As for X-Forwarded-For: earlier elements cannot be vouched for.
    let req = direct_without_client_addr(
        &[
            ("host", "front"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("forwarded", "for=203.0.113.50"),
        ],
        ProxyDirector::new().forwarded(true),
    );
    assert_eq!(
        req.headers()
            .get_all("forwarded")
            .iter()
            .collect::<Vec<_>>(),
        ["for=unknown;host=front;proto=http"]
    );
    assert!(req.headers().get("x-forwarded-for").is_none());
}

#[test]
fn director_appends_an_rfc7239_forwarded_element() {
    let d = || {
        ProxyDirector::new()
            .forwarded(true)
            .forwarded_for(ForwardedFor::Append)
    };
    let req = direct("http://b", "/", &[("host", "front.example:8443")], d());
    assert_eq!(
        req.headers()["forwarded"],
        "for=192.0.2.7;host=\"front.example:8443\";proto=http"
    );
    let chained = direct(
        "http://b",
        "/",
        &[("host", "front"), ("forwarded", "for=198.51.100.17")],
        d(),
    );
    assert_eq!(
        chained.headers()["forwarded"],
        "for=198.51.100.17, for=192.0.2.7;host=front;proto=http"
    );
    let mut v6 = Request::builder()
        .uri("/")
        .version(http::Version::HTTP_10)
        .body(())
        .unwrap();
    v6.extensions_mut()
        .insert(Member::new(Backend::new("http://b").unwrap()));
    v6.extensions_mut()
        .insert(ClientAddr("[2001:db8::1]:1".parse().unwrap()));
    d().direct(&mut v6).unwrap();
    assert_eq!(
        v6.headers()["forwarded"],
        "for=\"[2001:db8::1]\";proto=http"
    );
}

#[test]
fn director_removes_every_hop_by_hop_header() {
    let req = direct(
        "http://b",
        "/",
        &[
            ("connection", "keep-alive, x-conn-a"),
            ("connection", "X-Conn-B"),
            ("x-conn-a", "1"),
            ("x-conn-b", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ],
        ProxyDirector::new(),
    );
    for name in [
        "connection",
        "x-conn-a",
        "x-conn-b",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(req.headers().get(name).is_none(), "{name} leaked upstream");
    }
    assert_eq!(req.headers()["x-end-to-end"], "kept");
}

#[test]
fn trailer_is_end_to_end_unless_connection_lists_it() {
    // RFC 9110 §7.6.1 does not list Trailer; hyper's HTTP/1.1 sends only
    // the trailer fields it announces.
    let req = direct(
        "http://b",
        "/",
        &[
            ("connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "grpc-status, grpc-message"),
            ("transfer-encoding", "chunked"),
        ],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["trailer"], "grpc-status, grpc-message");
    assert_eq!(req.headers()["te"], "trailers");
    assert!(req.headers().get("transfer-encoding").is_none());

    let listed = direct(
        "http://b",
        "/",
        &[("connection", "Trailer"), ("trailer", "x-checksum")],
        ProxyDirector::new(),
    );
    assert!(listed.headers().get("trailer").is_none());

    let res = Response::builder()
        .header("trailer", "grpc-status")
        .header("transfer-encoding", "chunked")
        .body(())
        .unwrap();
    let res = strip_hop_by_hop_response(res).unwrap();
    assert_eq!(res.headers().len(), 1);
    assert_eq!(res.headers()["trailer"], "grpc-status");
    let listed = Response::builder()
        .header("connection", "trailer")
        .header("trailer", "grpc-status")
        .body(())
        .unwrap();
    assert!(strip_hop_by_hop_response(listed)
        .unwrap()
        .headers()
        .is_empty());
}

#[test]
fn director_keeps_a_websocket_upgrade_and_te_trailers() {
    let req = direct(
        "http://b",
        "/ws",
        &[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("te", "trailers, gzip"),
        ],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["connection"], "upgrade");
    assert_eq!(req.headers()["upgrade"], "websocket");
    assert_eq!(
        req.headers()["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert_eq!(req.headers()["te"], "trailers");
}

#[test]
fn only_a_websocket_upgrade_is_forwarded() {
    // h2c smuggling: a backend that switches to HTTP/2 would take requests
    // the proxy never sees.
    let h2c = direct(
        "http://b",
        "/",
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-end-to-end", "kept"),
        ],
        ProxyDirector::new(),
    );
    for name in ["connection", "upgrade", "http2-settings"] {
        assert!(h2c.headers().get(name).is_none(), "{name} leaked upstream");
    }
    assert_eq!(h2c.headers()["x-end-to-end"], "kept");

    // HTTP2-Settings goes even when Connection does not list it, and
    // beside a WebSocket upgrade; an offer of several protocols keeps only
    // websocket; the token is matched in any case.
    for upgrade in [
        "websocket",
        "WebSocket",
        "h2c, websocket",
        "foo/1, WEBSOCKET",
    ] {
        let req = direct(
            "http://b",
            "/",
            &[
                ("connection", "keep-alive, upgrade"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
            ProxyDirector::new(),
        );
        assert_eq!(req.headers()["connection"], "upgrade", "{upgrade}");
        assert_eq!(
            req.headers().get_all("upgrade").iter().collect::<Vec<_>>(),
            ["websocket"],
            "{upgrade}"
        );
        assert!(req.headers().get("http2-settings").is_none(), "{upgrade}");
    }

    // Other protocols are dropped, on requests and on 101 answers alike.
    for upgrade in ["h2c", "TLS/1.2", "websocketx", "h2c, http/2"] {
        let req = direct(
            "http://b",
            "/",
            &[("connection", "upgrade"), ("upgrade", upgrade)],
            ProxyDirector::new(),
        );
        assert!(req.headers().get("connection").is_none(), "{upgrade}");
        assert!(req.headers().get("upgrade").is_none(), "{upgrade}");
        let switching = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", upgrade)
            .body(())
            .unwrap();
        let switching = strip_hop_by_hop_response(switching).unwrap();
        assert!(switching.headers().is_empty(), "{upgrade}");
    }
}

#[test]
fn an_upgrade_header_without_connection_upgrade_is_dropped() {
    let mut headers = HeaderMap::new();
    headers.insert("upgrade", "websocket".parse().unwrap());
    remove_hop_by_hop_headers(&mut headers);
    assert!(headers.is_empty());
}

#[test]
fn a_content_length_beside_transfer_encoding_goes_with_it() {
    // RFC 9112 §6.3: the chunked framing wins; the length would frame the
    // re-chunked body on the next hop.
    let mut headers = HeaderMap::new();
    headers.insert("transfer-encoding", "chunked".parse().unwrap());
    headers.insert("content-length", "100".parse().unwrap());
    headers.insert("content-type", "text/plain".parse().unwrap());
    remove_hop_by_hop_headers(&mut headers);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers["content-type"], "text/plain");
    // Without Transfer-Encoding the length is the framing, and stays.
    let mut headers = HeaderMap::new();
    headers.insert("content-length", "100".parse().unwrap());
    headers.insert("connection", "keep-alive".parse().unwrap());
    remove_hop_by_hop_headers(&mut headers);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers["content-length"], "100");
}

#[test]
fn responses_lose_hop_by_hop_headers_but_101_keeps_its_upgrade() {
    let res = Response::builder()
        .header("connection", "close, x-internal")
        .header("x-internal", "1")
        .header("upgrade", "websocket")
        .header("keep-alive", "timeout=5")
        .header("content-type", "text/plain")
        .body(())
        .unwrap();
    let res = strip_hop_by_hop_response(res).unwrap();
    assert_eq!(res.headers().len(), 1);
    assert_eq!(res.headers()["content-type"], "text/plain");

    let switching = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(())
        .unwrap();
    let switching = strip_hop_by_hop_response(switching).unwrap();
    assert_eq!(switching.headers()["connection"], "upgrade");
    assert_eq!(switching.headers()["upgrade"], "websocket");
    assert!(switching.headers().contains_key("sec-websocket-accept"));
}

#[tokio::test]
async fn director_without_a_pick_fails_and_does_not_call_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(service_fn(move |_req: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(matches!(err, Error::MissingExtension { .. }), "{err:?}");
    assert_eq!(err.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn request_errors_are_4xx_and_name_no_backend() {
    let bad = Error::BadRequest {
        reason: "more than one Host header line".into(),
    };
    assert_eq!(bad.status_code(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.to_string(),
        "bad request: more than one Host header line"
    );
    let long = Error::UriTooLong {
        len: 70_000,
        max: 65_534,
    };
    assert_eq!(long.status_code(), StatusCode::URI_TOO_LONG);
    assert_eq!(
        long.to_string(),
        "the request target would be 70000 bytes long once rewritten, more than the 65534 \
         allowed: shorten its path or query"
    );
}

#[tokio::test]
async fn a_failing_director_hook_is_a_502_hook_error() {
    let svc = ServiceBuilder::new()
        .layer(DirectorLayer::new(|_req: &mut Req| {
            Err("no route for tenant")
        }))
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    match &err {
        Error::Hook { stage, source } => {
            assert_eq!(*stage, HookStage::Director);
            assert_eq!(source.to_string(), "no route for tenant");
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
    assert_eq!(err.to_string(), "director hook failed: no route for tenant");
}

#[tokio::test]
async fn a_failing_modify_response_hook_is_a_502_hook_error() {
    let svc = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(|_res: Response<()>| {
            Err::<Response<()>, _>("bad body")
        }))
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Hook {
                stage: HookStage::ModifyResponse,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn modify_response_edits_status_headers_and_maps_the_body() {
    let svc = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(|res: Response<&'static str>| {
            let (mut parts, body) = res.into_parts();
            parts.status = StatusCode::ACCEPTED;
            parts
                .headers
                .insert("x-len", body.len().to_string().parse().unwrap());
            Ok::<_, Infallible>(Response::from_parts(parts, body.to_uppercase()))
        }))
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Response::new("hello"))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["x-len"], "5");
    assert_eq!(res.body(), "HELLO");
}

#[tokio::test]
async fn inner_errors_pass_modify_response_untouched() {
    let svc = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(|res: Response<()>| {
            Ok::<_, Infallible>(res)
        }))
        .service(service_fn(|_req: Req| async {
            Err::<Response<()>, _>(std::io::Error::other("connection reset"))
        }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(matches!(err, Error::Upstream { .. }), "{err:?}");
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
}

fn lb(strategy: Strategy, uris: &[&str]) -> LoadBalancer {
    LoadBalancer::new(strategy, uris.iter().copied()).unwrap()
}

/// An inner service that answers with the id of the picked backend.
fn echo_pick(
) -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    service_fn(|req: Req| async move {
        let member = req
            .extensions()
            .get::<Member>()
            .expect("pick in extensions");
        Ok::<_, Infallible>(Response::new(member.id().to_owned()))
    })
}

#[tokio::test]
async fn load_balance_puts_the_pick_in_the_extensions_in_strategy_order() {
    let lb = lb(Strategy::RoundRobin, &["http://a", "http://b", "http://c"]);
    let mut svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .service(echo_pick());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        seen.push(res.into_body());
    }
    assert_eq!(seen, ["a", "b", "c", "a"]);
}

#[tokio::test]
async fn load_balance_uses_the_key_extractor() {
    let lb = lb(
        Strategy::consistent_hash(),
        &["http://a", "http://b", "http://c"],
    );
    fn tenant(req: &Req) -> Option<AffinityKey<'_>> {
        req.headers().get("x-tenant").map(|v| v.as_bytes().into())
    }
    let mut svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).key(tenant))
        .service(echo_pick());
    for t in ["acme", "globex", "initech", "umbrella"] {
        let expected = lb.pick(Some(t.as_bytes())).unwrap().id().to_owned();
        for _ in 0..3 {
            let req = Request::builder().header("x-tenant", t).body(()).unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(res.body(), &expected, "tenant {t}");
        }
    }
}

#[tokio::test]
async fn load_balance_without_backends_is_a_503_error_and_skips_the_inner_service() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, Vec::<&str>::new()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(service_fn(|_req: Req| async {
            panic!("inner service called without a backend");
            #[allow(unreachable_code)]
            Ok::<Response<()>, Infallible>(Response::new(()))
        }));
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert!(matches!(err, Error::NoBackends));
    assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);

    lb.add("http://a").unwrap();
    lb.mark_down("a").unwrap();
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(matches!(err, Error::AllBackendsDown { count: 1 }));
    assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_request_dropped_in_flight_is_no_longer_counted_nor_reported() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(service_fn(|_req: Req| {
            std::future::pending::<Result<Response<()>, Infallible>>()
        }));
    let load = lb.get("a").unwrap().load().clone();
    let mut future = Box::pin(svc.oneshot(Request::new(())));
    let polled = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(future.as_mut(), cx).is_pending())
    })
    .await;
    assert!(polled, "the backend never answers");
    assert_eq!((load.in_flight(), load.started()), (1, 1));
    drop(future);
    assert_eq!(load.in_flight(), 0);
    assert_eq!((load.successes(), load.failures()), (0, 0));
}

#[tokio::test]
async fn load_balance_counts_in_flight_requests_until_the_response() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(service_fn(move |_req: Req| {
            let wait = wait.clone();
            async move {
                if let Some(rx) = wait.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(Response::new(()))
            }
        }));
    let pending = tokio::spawn(svc.oneshot(Request::new(())));
    let load = lb.get("a").unwrap().load().clone();
    for _ in 0..100 {
        if load.in_flight() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(load.in_flight(), 1);
    release.send(()).unwrap();
    pending.await.unwrap().unwrap();
    assert_eq!(load.in_flight(), 0);
    assert_eq!(load.successes(), 1);
}

#[tokio::test]
async fn load_balance_reports_failures_by_policy() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let status_inner = |code: u16| {
        service_fn(move |_req: Req| async move {
            Ok::<_, Infallible>(Response::builder().status(code).body(()).unwrap())
        })
    };
    let load = lb.get("a").unwrap().load().clone();
    for code in [200, 404, 500, 502, 503, 504] {
        ServiceBuilder::new()
            .layer(LoadBalanceLayer::new(lb.clone()))
            .service(status_inner(code))
            .oneshot(Request::new(()))
            .await
            .unwrap();
    }
    // Default policy: 502, 503, 504 are failures; 500 is the app's answer.
    assert_eq!((load.successes(), load.failures()), (3, 3));
    assert_eq!(load.consecutive_failures(), 3);

    let strict = LoadBalanceLayer::new(lb.clone())
        .failure_policy(FailurePolicy::new(|s| s.is_server_error()));
    ServiceBuilder::new()
        .layer(strict)
        .service(status_inner(500))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(load.failures(), 4);
}

#[tokio::test]
async fn load_balance_wraps_inner_errors_with_the_backend_and_counts_them() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let err = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(service_fn(|_req: Req| async {
            Err::<Response<()>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        }))
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    match &err {
        Error::Upstream { backend, source } => {
            assert_eq!(backend, "a");
            assert_eq!(source.to_string(), "connection refused");
        }
        other => panic!("expected an upstream error, got {other:?}"),
    }
    assert_eq!(lb.get("a").unwrap().load().failures(), 1);
}

#[tokio::test]
async fn hook_errors_are_not_counted_against_the_backend() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let err = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(|_req: &mut Req| {
            Err("refused by policy")
        }))
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Response::new(()))
        }))
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Hook { .. }));
    assert_eq!(lb.get("a").unwrap().load().failures(), 0);
}

/// LoadBalance over ProxyDirector over an inner service that counts its
/// calls; the `Load` of the one backend, `http://a/api`.
fn balanced_director() -> (
    impl Service<Req, Response = Response<()>, Error = Error>,
    Arc<tower_lb::Load>,
    Arc<AtomicUsize>,
) {
    let lb = lb(Strategy::RoundRobin, &["http://a/api"]);
    let load = lb.get("a").unwrap().load().clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(service_fn(move |_req: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
    (svc, load, calls)
}

/// (in flight, successes, failures, consecutive failures)
fn counters(load: &tower_lb::Load) -> (u64, u64, u64, u64) {
    (
        load.in_flight(),
        load.successes(),
        load.failures(),
        load.consecutive_failures(),
    )
}

#[tokio::test]
async fn requests_the_director_refuses_are_not_counted_against_the_backend() {
    let (mut svc, load, calls) = balanced_director();
    for _ in 0..3 {
        let req = Request::builder()
            .uri("/x")
            .header("host", "front.example")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // A path that the backend's prefix makes too long.
    for _ in 0..3 {
        let req = Request::builder()
            .uri(format!("/{}", "a".repeat(65_530)))
            .header("host", "front.example")
            .body(())
            .unwrap();
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::UriTooLong {
                    len: 65_535,
                    max: 65_534
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status_code(), StatusCode::URI_TOO_LONG);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Released, and neither a failure nor a success.
    assert_eq!(counters(&load), (0, 0, 0, 0));

    // A hook of one's own refusing a request is not counted either.
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let err = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(|_req: &mut Req| {
            Err(Error::BadRequest {
                reason: "no tenant".into(),
            })
        }))
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Response::new(()))
        }))
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    assert_eq!(counters(lb.get("a").unwrap().load()), (0, 0, 0, 0));

    // A request that is forwarded still counts.
    let ok = Request::builder()
        .uri("/x")
        .header("host", "front.example")
        .body(())
        .unwrap();
    svc.ready().await.unwrap().call(ok).await.unwrap();
    assert_eq!(counters(&load), (0, 1, 0, 0));
}

/// Ready only after `open` is set: checks that readiness passes through.
#[derive(Clone)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<Req> for Gate {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

#[test]
fn every_layer_passes_back_pressure_through() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut svc = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(|r: Response<()>| {
            Ok::<_, Infallible>(r)
        }))
        .layer(LoadBalanceLayer::new(lb(
            Strategy::RoundRobin,
            &["http://a"],
        )))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(Gate { open: open.clone() });
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(svc.poll_ready(&mut cx).is_pending());
    open.store(true, Ordering::SeqCst);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
}

#[tokio::test]
async fn the_full_stack_rewrites_the_request_for_the_picked_backend() {
    let lb = lb(
        Strategy::RoundRobin,
        &["http://10.0.0.1:8080/a", "http://10.0.0.2:9090/b"],
    );
    let mut svc = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(|mut res: Response<String>| {
            res.headers_mut()
                .insert("via", "1.1 tower-lb".parse().unwrap());
            Ok::<_, Infallible>(res)
        }))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(service_fn(|req: Req| async move {
            Ok::<_, Infallible>(Response::new(req.uri().to_string()))
        }));
    let mut uris = Vec::new();
    for _ in 0..2 {
        let req = Request::builder()
            .uri("/x?q=1")
            .header("host", "front.example")
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.headers()["via"], "1.1 tower-lb");
        uris.push(res.into_body());
    }
    assert_eq!(
        uris,
        [
            "http://10.0.0.1:8080/a/x?q=1",
            "http://10.0.0.2:9090/b/x?q=1"
        ]
    );
}

#[test]
fn x_forwarded_for_is_overwritten_at_an_edge_by_default() {
    let req = direct(
        "http://b",
        "/",
        &[("x-forwarded-for", "6.6.6.6, 203.0.113.1")],
        ProxyDirector::new(),
    );
    assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.7");
}

#[test]
fn x_forwarded_for_keeps_only_the_entries_of_trusted_hops() {
    let hops = |n| ProxyDirector::new().forwarded_for(ForwardedFor::TrustedHops(n));
    let chain = [
        ("x-forwarded-for", "6.6.6.6, 203.0.113.1"),
        ("x-forwarded-for", "10.0.0.9"),
    ];
    let xff = |n| direct("http://b", "/", &chain, hops(n)).headers()["x-forwarded-for"].clone();
    assert_eq!(xff(0), "192.0.2.7");
    assert_eq!(xff(1), "10.0.0.9, 192.0.2.7");
    assert_eq!(xff(2), "203.0.113.1, 10.0.0.9, 192.0.2.7");
    assert_eq!(xff(5), "6.6.6.6, 203.0.113.1, 10.0.0.9, 192.0.2.7");
    // Forwarded follows the same trust, and a quoted comma does not split.
    let req = direct(
        "http://b",
        "/",
        &[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]\";host=\"a,b\"",
        )],
        hops(1).forwarded(true),
    );
    assert_eq!(
        req.headers()["forwarded"],
        "for=\"[2001:db8::1]\";host=\"a,b\", for=192.0.2.7;host=front.example;proto=http"
    );
}

#[test]
fn a_host_that_is_not_exactly_host_and_port_is_a_bad_request() {
    for host in [
        "evil.example,trusted.example",
        "front.example:80:81",
        "front.example:",
        "front.example:123456",
        "%65vil.example",
        "front.example:8%30",
        "[::1",
        "[::1]x",
        "[v1.fe]",
        ":80",
    ] {
        let result = try_direct("http://b", "/", &[("host", host)], ProxyDirector::new());
        assert_eq!(
            bad_request(result),
            "the request's Host header is not a host and port",
            "{host}"
        );
    }
    for host in [
        "front.example",
        "front.example:8080",
        "[2001:db8::1]:443",
        "10.0.0.1",
        "a_b.local",
    ] {
        let req = direct("http://b", "/", &[("host", host)], ProxyDirector::new());
        assert_eq!(req.headers()["x-forwarded-host"], host);
    }
    // An absolute-form target's authority is the host asked for: the same
    // rule (`http` itself accepts a comma there).
    let mut req = picked("http://b", "/", &[("host", "front.example")]);
    *req.uri_mut() = "http://evil.example,trusted.example/".parse().unwrap();
    assert_eq!(
        bad_request(run(ProxyDirector::new(), req)),
        "the request's Host header is not a host and port"
    );
}

#[test]
fn an_http11_request_without_host_is_a_bad_request_but_http10_is_forwarded() {
    for empty in [None, Some("")] {
        let mut req = Request::builder().uri("/x");
        if let Some(host) = empty {
            req = req.header("host", host);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut()
            .insert(Member::new(Backend::new("http://b").unwrap()));
        assert_eq!(
            bad_request(run(ProxyDirector::new(), req)),
            "the HTTP/1.1 request has no Host header"
        );
    }
    let mut old = Request::builder()
        .uri("/x")
        .version(http::Version::HTTP_10)
        .body(())
        .unwrap();
    old.extensions_mut()
        .insert(Member::new(Backend::new("http://b").unwrap()));
    let old = run(ProxyDirector::new(), old).unwrap();
    assert_eq!(old.uri(), "http://b/x");
    // RFC 9110 §2.5: forwarded in the proxy's own version.
    assert_eq!(old.version(), http::Version::HTTP_11);
    assert!(old.headers().get("x-forwarded-host").is_none());
    // An empty Host on HTTP/1.0 names no host to forward either.
    let mut empty = Request::builder()
        .uri("/x")
        .version(http::Version::HTTP_10)
        .header("host", "")
        .body(())
        .unwrap();
    empty
        .extensions_mut()
        .insert(Member::new(Backend::new("http://b").unwrap()));
    let empty = run(ProxyDirector::new(), empty).unwrap();
    assert!(empty.headers().get("x-forwarded-host").is_none());
}

#[test]
fn options_asterisk_is_never_rewritten_under_a_prefix() {
    let mut req = picked("http://b:8080/api?v=1", "*", &[]);
    *req.method_mut() = http::Method::OPTIONS;
    let req = run(ProxyDirector::new(), req).unwrap();
    assert_eq!(req.uri().path(), "*");
    assert_eq!(req.uri().query(), None);
    assert_eq!(req.uri().authority().unwrap(), "b:8080");
    // `*` with another method is an ordinary (odd) path.
    assert_eq!(rewritten("http://b/api", "/*"), "http://b/api/*");
}

#[test]
fn connect_and_trace_are_405_unless_allowed() {
    for method in [http::Method::CONNECT, http::Method::TRACE] {
        let uri = if method == http::Method::CONNECT {
            "internal.example:22"
        } else {
            "/"
        };
        let mut req = picked("http://b:8080", uri, &[]);
        *req.method_mut() = method.clone();
        match run(ProxyDirector::new(), req) {
            Err(err @ Error::MethodNotAllowed { .. }) => {
                assert_eq!(err.status_code(), StatusCode::METHOD_NOT_ALLOWED);
                let res = err.to_response::<String>();
                assert_eq!(
                    res.headers()["allow"],
                    "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"
                );
            }
            other => panic!("{method}: expected MethodNotAllowed, got {other:?}"),
        }
    }
    // Allowed, a CONNECT goes to the picked backend, not to the address named.
    let mut req = picked(
        "http://b:8080",
        "internal.example:22",
        &[("host", "internal.example:22")],
    );
    *req.method_mut() = http::Method::CONNECT;
    let req = run(ProxyDirector::new().allow_connect(true), req).unwrap();
    assert_eq!(req.uri(), "b:8080");
    let mut req = picked("http://b:8080", "/t", &[]);
    *req.method_mut() = http::Method::TRACE;
    let req = run(ProxyDirector::new().allow_trace(true), req).unwrap();
    assert_eq!(req.uri(), "http://b:8080/t");
}

#[tokio::test]
async fn a_clients_connection_header_cannot_remove_what_a_hook_adds() {
    // golang/go#50580: the client lists the header an outer director sets.
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let svc = ServiceBuilder::new()
        .layer(DirectorLayer::new(|req: &mut Req| {
            req.headers_mut()
                .insert("x-gateway-tenant", "acme".parse().unwrap());
            Ok::<_, Infallible>(())
        }))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(service_fn(|req: Req| async move {
            Ok::<_, Infallible>(Response::new(req.headers().clone()))
        }));
    let req = Request::builder()
        .header("host", "front.example")
        .header("connection", "x-gateway-tenant, x-client-private")
        .header("x-gateway-tenant", "forged")
        .header("x-client-private", "1")
        .body(())
        .unwrap();
    let headers = svc.oneshot(req).await.unwrap().into_body();
    assert_eq!(headers["x-gateway-tenant"], "acme");
    assert!(headers.get("x-client-private").is_none());
    assert!(headers.get("connection").is_none());
}

#[tokio::test]
async fn the_director_strips_a_backends_hop_by_hop_response_headers_by_default() {
    let lb = lb(Strategy::RoundRobin, &["http://a"]);
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(service_fn(|_req: Req| async {
            let res = Response::builder()
                .header("connection", "x-internal")
                .header("x-internal", "secret")
                .header("upgrade", "h2c")
                .header("keep-alive", "timeout=5")
                .header("x-app", "kept")
                .body(())
                .unwrap();
            Ok::<_, Infallible>(res)
        }));
    let req = Request::builder()
        .header("host", "front.example")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let names: Vec<&str> = res.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-app"]);
}

#[tokio::test]
async fn a_closure_key_borrowing_from_the_request_needs_no_helper() {
    let lb = lb(
        Strategy::consistent_hash(),
        &["http://a", "http://b", "http://c"],
    );
    let svc = ServiceBuilder::new()
        .layer(
            LoadBalanceLayer::new(lb.clone())
                .key_fn(|req: &Req| req.headers().get("x-tenant").map(|v| v.as_bytes().into())),
        )
        .service(service_fn(|req: Req| async move {
            let id = req.extensions().get::<Member>().unwrap().id().to_owned();
            Ok::<_, Infallible>(Response::new(id))
        }));
    for tenant in ["acme", "globex", "initech"] {
        let expected = lb.pick(Some(tenant.as_bytes())).unwrap().id().to_owned();
        for _ in 0..3 {
            let req = Request::builder()
                .header("x-tenant", tenant)
                .body(())
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.body(), &expected, "{tenant}");
        }
    }
}

#[test]
fn error_responses_name_no_backend() {
    let errors = [
        Error::Upstream {
            backend: "10.9.8.7:8080".into(),
            source: "connect to 10.9.8.7:8080 refused".into(),
        },
        Error::AllBackendsDown { count: 3 },
        Error::BadRequest {
            reason: "Host 10.9.8.7".into(),
        },
        Error::Hook {
            stage: HookStage::Director,
            source: "db at 10.9.8.7 down".into(),
        },
    ];
    let statuses: Vec<u16> = errors
        .iter()
        .map(|e| {
            let res = e.to_response::<String>();
            assert!(!res.body().contains("10.9.8.7"), "{e}");
            assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
            res.status().as_u16()
        })
        .collect();
    assert_eq!(statuses, [502, 503, 400, 502]);
}

proptest::proptest! {
    /// The client's address in `X-Forwarded-For` reads as the address's
    /// own text, every IPv4 and IPv6 address (IPv4 is formatted by hand).
    #[test]
    fn x_forwarded_for_writes_any_client_address_as_std_does(
        v4 in proptest::prelude::any::<[u8; 4]>(),
        v6 in proptest::prelude::any::<[u16; 8]>(),
        port in proptest::prelude::any::<u16>(),
    ) {
        let v4 = std::net::IpAddr::from(v4);
        let v6 = std::net::IpAddr::from(v6);
        for ip in [v4, v6] {
            let mut req = picked("http://b", "/", &[("x-forwarded-for", "6.6.6.6")]);
            req.extensions_mut()
                .insert(ClientAddr(std::net::SocketAddr::new(ip, port)));
            let req = run(ProxyDirector::new(), req).unwrap();
            proptest::prop_assert_eq!(req.headers()["x-forwarded-for"].to_str().unwrap(), ip.to_string());
        }
    }
}
