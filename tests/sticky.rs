//! Sticky sessions by cookie insertion: the load-balance layer in process,
//! then the whole gateway over real loopback sockets, for HTTP and for
//! WebSocket (the source article's reconnect from a changed IP address).

#[path = "../examples/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::{
    ClientAddr, ClientIp, KeyExtractor, Secret, Secrets, StickyCookie, TokenFormat,
};
use tower_lb::{Backend, LoadBalancer, Member, Strategy};

/// The gateway's secret, as `openssl rand -base64 32` writes one.
const SECRET: &str = "w3yyCA3iPoG0n5sl1YxXD3u6HVgjBuecyrvZz3Fu+zA=";
const OLD_SECRET: &str = "vxP00M5JtVFGIFqMU1dq861LN09i43y+5ugLwYFVapc=";

fn secret() -> Secret {
    SECRET.parse().unwrap()
}

fn sticky() -> StickyCookie {
    StickyCookie::new("lb", secret()).unwrap()
}

/// Every token format this build knows: the forgery tests hold for each.
const FORMATS: [TokenFormat; 2] = [TokenFormat::SipHash, TokenFormat::XChaCha20Poly1305];

// ---------------------------------------------------------------------------
// In process: the layer over a service that answers with the picked id.
// ---------------------------------------------------------------------------

/// What the inner service saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    cookies: Vec<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The layer with `sticky` over a service answering `status` with the
/// picked backend's id; the log records what reached it.
fn stack(
    lb: &LoadBalancer,
    sticky: StickyCookie,
    status: StatusCode,
) -> (
    impl Service<Request<()>, Response = Response<String>, Error = tower_lb::Error>,
    Log,
) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).sticky(sticky))
        .service(service_fn(move |req: Request<()>| {
            let backend = req.extensions().get::<Member>().unwrap().id().to_owned();
            let cookies = req
                .headers()
                .get_all(COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            seen.lock().unwrap().push(Seen { cookies });
            let res = Response::builder().status(status).body(backend).unwrap();
            async move { Ok::<_, Infallible>(res) }
        }));
    (svc, log)
}

fn round_robin(n: usize) -> LoadBalancer {
    let backends: Vec<Backend> = (1..=n)
        .map(|i| {
            Backend::new(&format!("http://10.0.0.{i}:80"))
                .unwrap()
                .with_id(format!("b{i}"))
                .unwrap()
        })
        .collect();
    LoadBalancer::new(Strategy::RoundRobin, backends).unwrap()
}

fn with_cookie(cookie: &str) -> Request<()> {
    Request::builder().header(COOKIE, cookie).body(()).unwrap()
}

/// Sends one request; returns the backend and the `name=value` of any
/// `Set-Cookie`.
async fn send<S>(svc: &mut S, req: Request<()>) -> (String, Option<String>, HeaderMap)
where
    S: Service<Request<()>, Response = Response<String>, Error = tower_lb::Error>,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let cookie = support::cookie_pair(&res);
    let (parts, body) = res.into_parts();
    (body, cookie, parts.headers)
}

#[tokio::test]
async fn a_new_client_is_balanced_and_given_a_cookie() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    let (first, cookie, headers) = send(&mut svc, Request::new(())).await;
    let (second, _, _) = send(&mut svc, Request::new(())).await;
    assert_eq!((first.as_str(), second.as_str()), ("b1", "b2"));
    let set_cookie = headers[SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.ends_with("; Path=/; HttpOnly"), "{set_cookie}");
    // Opaque: neither the backend's id nor its name in the clear. (The
    // value is random base64url, which may hold "b1" by chance, so the name
    // is looked for outside it; it has no '.', so never holds the id.)
    let (value, attributes) = set_cookie.split_once(';').unwrap();
    assert_ne!(value, "lb=b1");
    assert!(!set_cookie.contains("10.0.0.1"));
    assert!(!attributes.contains("b1"), "{attributes}");
    assert_eq!(headers[CACHE_CONTROL], "private");
    assert!(cookie.unwrap().starts_with("lb="));
}

#[tokio::test]
async fn a_valid_cookie_wins_over_the_strategy_and_is_not_reissued() {
    let lb = round_robin(3);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    send(&mut svc, Request::new(())).await; // b1
    let (backend, cookie, _) = send(&mut svc, Request::new(())).await;
    assert_eq!(backend, "b2");
    let cookie = cookie.unwrap();
    for _ in 0..6 {
        let (b, reissued, headers) = send(&mut svc, with_cookie(&cookie)).await;
        assert_eq!(b, "b2");
        assert_eq!(reissued, None);
        assert!(headers.get(CACHE_CONTROL).is_none());
    }
}

#[tokio::test]
async fn a_valid_cookie_wins_over_the_affinity_key() {
    let lb = LoadBalancer::new(
        Strategy::consistent_hash(),
        ["http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3"],
    )
    .unwrap();
    fn user<B>(req: &Request<B>) -> Option<tower_lb::sticky::AffinityKey<'_>> {
        req.headers().get("x-user").map(|v| v.as_bytes().into())
    }
    let mut svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).key(user).sticky(sticky()))
        .service(service_fn(|req: Request<()>| async move {
            let id = req.extensions().get::<Member>().unwrap().id().to_owned();
            Ok::<_, Infallible>(Response::new(id))
        }));
    let cookie = sticky().token_at("10.0.0.3", SystemTime::now()).unwrap();
    for user in (0..20).map(|i| format!("user-{i}")) {
        let req = Request::builder()
            .header("x-user", &user)
            .header(COOKIE, format!("lb={cookie}"))
            .body(())
            .unwrap();
        assert_eq!(send(&mut svc, req).await.0, "10.0.0.3", "{user}");
    }
}

#[tokio::test]
async fn a_cookie_for_a_down_backend_is_redispatched_and_reissued() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    let (first, cookie, _) = send(&mut svc, Request::new(())).await;
    let cookie = cookie.unwrap();
    lb.mark_down(&first).unwrap();

    let (moved, fresh, _) = send(&mut svc, with_cookie(&cookie)).await;
    assert_ne!(moved, first);
    let fresh = fresh.expect("the failover re-issues the cookie");
    assert_ne!(fresh, cookie);
    // The fresh cookie holds, even once the old backend is back.
    lb.mark_up(&first).unwrap();
    for _ in 0..3 {
        let (b, reissued, _) = send(&mut svc, with_cookie(&fresh)).await;
        assert_eq!((b.as_str(), reissued), (moved.as_str(), None));
    }
    // And the old cookie goes back to the old backend, now up again.
    assert_eq!(send(&mut svc, with_cookie(&cookie)).await.0, first);
}

#[tokio::test]
async fn a_cookie_for_a_removed_backend_is_redispatched_and_reissued() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    let (first, cookie, _) = send(&mut svc, Request::new(())).await;
    lb.remove(&first).unwrap();
    let (moved, fresh, _) = send(&mut svc, with_cookie(&cookie.unwrap())).await;
    assert_eq!(moved, "b2");
    assert!(fresh.is_some());
}

#[tokio::test]
async fn all_backends_down_is_503_whatever_the_cookie() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    let (_, cookie, _) = send(&mut svc, Request::new(())).await;
    lb.mark_down("b1").unwrap();
    lb.mark_down("b2").unwrap();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(with_cookie(&cookie.unwrap()))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn forged_tampered_expired_and_foreign_cookies_count_as_none() {
    for format in FORMATS {
        forged_cookies_count_as_none_in(format).await;
    }
}

async fn forged_cookies_count_as_none_in(format: TokenFormat) {
    let lb = round_robin(2);
    let sticky = || sticky().token_format(format);
    let (mut svc, log) = stack(&lb, sticky(), StatusCode::OK);
    let genuine = sticky().token_at("b2", SystemTime::now()).unwrap();
    let mut tampered = genuine.clone().into_bytes();
    tampered[30] = if tampered[30] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = StickyCookie::new("lb", Secret::generate().unwrap())
        .unwrap()
        .token_format(format)
        .token_at("b2", SystemTime::now())
        .unwrap();
    let other_format = FORMATS.into_iter().find(|&f| f != format).unwrap();
    let in_another_format = sticky()
        .token_format(other_format)
        .token_at("b2", SystemTime::now())
        .unwrap();
    let expired = sticky()
        .max_age(Duration::from_secs(60))
        .unwrap()
        .token_at("b2", SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let bad = [
        "lb=b2".to_owned(),
        "lb=10.0.0.2:80".to_owned(),
        "lb=http://10.0.0.2:80".to_owned(),
        "lb=127.0.0.1:1".to_owned(),
        format!("lb={tampered}"),
        format!("lb={foreign}"),
        format!("lb={expired}"),
        format!("lb={in_another_format}"),
        format!("lb={}", &genuine[..genuine.len() - 1]),
        format!("lb={genuine}A"),
        "lb=\"\"; lb=; lb".to_owned(),
    ];
    // Round robin from b1: every one of these is balanced as if it had no
    // cookie, and gets a real one.
    for (i, cookie) in bad.iter().enumerate() {
        let (backend, fresh, _) = send(&mut svc, with_cookie(cookie)).await;
        let expected = if i % 2 == 0 { "b1" } else { "b2" };
        assert_eq!(backend, expected, "{cookie}");
        assert!(fresh.is_some(), "{cookie}");
    }
    // None of them reached a backend either: every cookie called `lb` is
    // stripped (a bare `lb` without `=` names no cookie and is left).
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .flat_map(|s| &s.cookies)
            .all(|c| !c.contains("lb=")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_genuine_cookie_for_an_unknown_backend_is_redispatched() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::OK);
    // Made with the right secret for an id that is not configured (a
    // backend removed before this gateway started, say).
    let unknown = sticky().token_at("10.9.9.9:80", SystemTime::now()).unwrap();
    let (backend, fresh, _) = send(&mut svc, with_cookie(&format!("lb={unknown}"))).await;
    assert_eq!(backend, "b1");
    assert!(fresh.is_some());
}

#[tokio::test]
async fn the_sticky_cookie_is_stripped_upstream_and_the_others_kept() {
    let lb = round_robin(2);
    let (mut svc, log) = stack(&lb, sticky(), StatusCode::OK);
    let (_, cookie, _) = send(&mut svc, Request::new(())).await;
    let cookie = cookie.unwrap();
    let req = Request::builder()
        .header(COOKIE, format!("a=1; {cookie}; b=2"))
        .header(COOKIE, cookie.clone())
        .header(COOKIE, "c=3")
        .body(())
        .unwrap();
    send(&mut svc, req).await;
    assert_eq!(log.lock().unwrap()[1].cookies, ["a=1; b=2; c=3"]);

    let (mut keep, log) = stack(&lb, sticky().strip_upstream(false), StatusCode::OK);
    send(&mut keep, with_cookie(&format!("a=1; {cookie}"))).await;
    assert_eq!(log.lock().unwrap()[0].cookies, [format!("a=1; {cookie}")]);
}

#[tokio::test]
async fn a_failed_response_gets_no_cookie() {
    let lb = round_robin(2);
    let (mut svc, _) = stack(&lb, sticky(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, cookie, headers) = send(&mut svc, Request::new(())).await;
    assert_eq!(cookie, None);
    assert!(headers.get(CACHE_CONTROL).is_none());
}

/// The layer over a backend whose responses set cookies of their own:
/// `lb=; Max-Age=0` (the sticky name, as a logout would) when the request
/// asks for it with `x-logout`, and always `theme=dark`.
fn stack_setting_cookies(
    lb: &LoadBalancer,
    sticky: StickyCookie,
) -> impl Service<Request<()>, Response = Response<String>, Error = tower_lb::Error> {
    ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).sticky(sticky))
        .service(service_fn(|req: Request<()>| {
            let backend = req.extensions().get::<Member>().unwrap().id().to_owned();
            let mut res = Response::builder().header(SET_COOKIE, "theme=dark");
            if req.headers().contains_key("x-logout") {
                res = res.header(SET_COOKIE, " lb =; Max-Age=0");
            }
            let res = res.body(backend).unwrap();
            async move { Ok::<_, Infallible>(res) }
        }))
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The `lb=…` pair the balancer set, among the response's cookies.
fn sticky_pair(headers: &HeaderMap) -> Option<String> {
    set_cookies(headers)
        .into_iter()
        .find(|line| line.starts_with("lb="))
        .map(|line| line.split(';').next().unwrap().to_owned())
}

fn logout(cookie: Option<&str>) -> Request<()> {
    let mut req = Request::builder().header("x-logout", "1");
    if let Some(cookie) = cookie {
        req = req.header(COOKIE, cookie);
    }
    req.body(()).unwrap()
}

#[tokio::test]
async fn a_backend_cannot_set_the_sticky_cookie_by_default() {
    let lb = round_robin(2);
    let mut svc = stack_setting_cookies(&lb, sticky());
    // A new client: the backend's `lb` goes, the balancer's comes.
    let (backend, _, headers) = send(&mut svc, logout(None)).await;
    let cookie = sticky_pair(&headers).unwrap();
    let lines = set_cookies(&headers);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "theme=dark");
    assert!(
        lines[1].starts_with(&cookie) && cookie.len() > 50,
        "{lines:?}"
    );
    // A client with a valid cookie: nothing to insert, and the backend's
    // `lb` is still removed, so the client keeps its backend.
    for _ in 0..3 {
        let (again, _, headers) = send(&mut svc, logout(Some(&cookie))).await;
        assert_eq!(again, backend);
        assert_eq!(set_cookies(&headers), ["theme=dark"]);
    }
}

#[tokio::test]
async fn with_preserve_a_backend_can_end_persistence_itself() {
    let lb = round_robin(2);
    let mut svc = stack_setting_cookies(&lb, sticky().preserve(true));
    // Without a cookie from the backend, the balancer inserts as usual.
    let (backend, _, headers) = send(&mut svc, Request::new(())).await;
    let cookie = sticky_pair(&headers).unwrap();
    assert_eq!(set_cookies(&headers).len(), 2);
    let (again, _, _) = send(&mut svc, with_cookie(&cookie)).await;
    assert_eq!(again, backend);
    // The backend's own `lb` stays as it is, and no cookie is inserted:
    // neither for a client that has one nor for a new client.
    let (_, _, headers) = send(&mut svc, logout(Some(&cookie))).await;
    assert_eq!(set_cookies(&headers), ["theme=dark", " lb =; Max-Age=0"]);
    let (_, _, headers) = send(&mut svc, logout(None)).await;
    assert_eq!(set_cookies(&headers), ["theme=dark", " lb =; Max-Age=0"]);
}

#[tokio::test]
async fn during_rotation_old_cookies_hold_and_are_reissued_with_the_new_secret() {
    let lb = round_robin(2);
    let old = StickyCookie::new("lb", OLD_SECRET.parse::<Secret>().unwrap()).unwrap();
    let rotated = StickyCookie::new(
        "lb",
        Secrets::with_previous(secret(), [OLD_SECRET.parse().unwrap()]).unwrap(),
    )
    .unwrap();
    let (mut svc, _) = stack(&lb, rotated, StatusCode::OK);
    let old_cookie = format!("lb={}", old.token_at("b2", SystemTime::now()).unwrap());

    let (backend, fresh, _) = send(&mut svc, with_cookie(&old_cookie)).await;
    assert_eq!(backend, "b2");
    let fresh = fresh.expect("a cookie made with the old secret is re-issued");
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, fresh.parse().unwrap());
    assert_eq!(sticky().verify(&headers).unwrap().id(), "b2");
    assert!(old.verify(&headers).is_none());
}

#[tokio::test]
async fn a_cookie_past_half_its_life_is_renewed() {
    let lb = round_robin(2);
    let sticky = sticky().max_age(Duration::from_secs(600)).unwrap();
    let (mut svc, _) = stack(&lb, sticky.clone(), StatusCode::OK);
    let aged = sticky
        .token_at("b2", SystemTime::now() - Duration::from_secs(400))
        .unwrap();
    let (backend, fresh, headers) = send(&mut svc, with_cookie(&format!("lb={aged}"))).await;
    assert_eq!(backend, "b2");
    assert!(fresh.is_some());
    assert!(headers[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("; Max-Age=600; Expires="));
}

// No header or cookie value makes the gateway send a request anywhere but
// to a configured backend: the full stack, with the standard director, over
// arbitrary cookies, Host headers, forwarding headers and absolute URIs.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn no_header_or_cookie_routes_outside_the_configured_backends(
        cookie in prop_oneof![
            "[ -~]{0,120}",
            "lb=[A-Za-z0-9_-]{60,110}",
            Just("lb=127.0.0.1:1".to_owned()),
            Just("lb=http://evil.example".to_owned()),
        ],
        host in "[a-z0-9.:]{1,30}",
        xff in "[0-9., ]{0,40}",
        uri in prop_oneof![
            Just("/".to_owned()),
            Just("http://evil.example:666/steal".to_owned()),
            "/[a-z/]{0,20}",
            "http://[a-z]{1,10}\\.example/[a-z]{0,5}",
        ],
        genuine in any::<bool>(),
        format in proptest::sample::select(FORMATS.to_vec()),
    ) {
        let sticky = || sticky().token_format(format);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lb = round_robin(2);
        let sent_to: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = sent_to.clone();
        let mut svc = ServiceBuilder::new()
            .layer(LoadBalanceLayer::new(lb.clone()).key(ClientIp::new().trusted_hops(1)).sticky(sticky()))
            .layer(DirectorLayer::new(ProxyDirector::new()))
            .service(service_fn(move |req: Request<()>| {
                sink.lock().unwrap().push(req.uri().authority().map(|a| a.to_string()).unwrap_or_default());
                async move { Ok::<_, Infallible>(Response::new(String::new())) }
            }));
        let mut cookie = cookie;
        if genuine {
            cookie.push_str(&format!("; lb={}", sticky().token_at("b2", SystemTime::now()).unwrap()));
        }
        let mut builder = Request::builder().uri(uri.as_str()).header("host", host.as_str()).header("x-forwarded-for", xff.as_str());
        if let Ok(value) = http::HeaderValue::from_str(&cookie) {
            builder = builder.header(COOKIE, value);
        }
        if let Ok(mut req) = builder.body(()) {
            req.extensions_mut().insert(ClientAddr("192.0.2.1:4000".parse().unwrap()));
            let result = runtime.block_on(async { svc.ready().await?.call(req).await });
            let sent = sent_to.lock().unwrap();
            match result {
                Ok(_) => {
                    prop_assert_eq!(sent.len(), 1);
                    prop_assert!(["10.0.0.1:80", "10.0.0.2:80"].contains(&sent[0].as_str()), "sent to {}", sent[0]);
                }
                // A Host that is not host[:port] is refused: sent nowhere.
                Err(error) => {
                    prop_assert!(matches!(error, tower_lb::Error::BadRequest { .. }), "{:?}", error);
                    prop_assert_eq!(sent.len(), 0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Over real loopback sockets.
// ---------------------------------------------------------------------------

/// A gateway on loopback in front of `backends` (ids and addresses),
/// balancing by client IP with consistent hashing, with `sticky`.
async fn gateway<K>(
    backends: &[(String, SocketAddr)],
    key: K,
    sticky: StickyCookie,
) -> (SocketAddr, LoadBalancer)
where
    K: KeyExtractor<tower_lb::proxy::RequestBody> + Clone + Send + Sync + 'static,
{
    let members: Vec<Backend> = backends
        .iter()
        .map(|(id, addr)| {
            Backend::new(&format!("http://{addr}"))
                .unwrap()
                .with_id(id.clone())
                .unwrap()
        })
        .collect();
    let lb = LoadBalancer::new(Strategy::consistent_hash(), members).unwrap();
    let stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(
            strip_hop_by_hop_response::<Incoming>,
        ))
        .layer(LoadBalanceLayer::new(lb.clone()).key(key).sticky(sticky))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(support::serve_proxy(listener, stack));
    (addr, lb)
}

async fn http_backends(names: &[&str]) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for name in names {
        out.push((
            name.to_string(),
            support::spawn_backend(name).await.unwrap(),
        ));
    }
    out
}

async fn ws_backends(names: &[&str]) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for name in names {
        out.push((
            name.to_string(),
            support::spawn_ws_backend(name).await.unwrap(),
        ));
    }
    out
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// An address in 127.0.0.0/8, other than 127.0.0.1, whose IP affinity
/// picks a different backend than `from` does: a client whose network
/// changed and whom IP affinity would move.
fn moved_client(lb: &LoadBalancer, from: IpAddr) -> IpAddr {
    let key = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let home = lb.pick(Some(&key(from))).unwrap();
    (2..=254)
        .map(loopback)
        .find(|&ip| lb.pick(Some(&key(ip))).unwrap().id() != home.id())
        .expect("some loopback address hashes to the other backend")
}

/// An HTTP client whose connections come from `from`.
fn client_from(from: IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    Client::builder(TokioExecutor::new()).build(connector)
}

struct Answer {
    backend: String,
    cookie: Option<String>,
    status: StatusCode,
}

async fn get(proxy: SocketAddr, from: IpAddr, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{proxy}/session"));
    if let Some(cookie) = cookie {
        req = req.header(COOKIE, cookie);
    }
    let res = client_from(from)
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let cookie = support::cookie_pair(&res);
    let backend = res
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    res.into_body().collect().await.unwrap();
    Answer {
        backend,
        cookie,
        status,
    }
}

#[tokio::test]
async fn http_a_cookie_keeps_a_client_whose_ip_changed_on_its_backend() {
    let backends = http_backends(&["a", "b"]).await;
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky()).await;
    let home = get(proxy, loopback(1), None).await;
    assert_eq!(home.status, StatusCode::OK);
    let cookie = home.cookie.expect("the first answer sets the cookie");

    let moved = moved_client(&lb, loopback(1));
    // IP affinity alone would move the client...
    assert_ne!(get(proxy, moved, None).await.backend, home.backend);
    // ...the cookie keeps it, and is not re-issued.
    for _ in 0..3 {
        let again = get(proxy, moved, Some(&cookie)).await;
        assert_eq!(again.backend, home.backend);
        assert_eq!(again.cookie, None);
    }
}

#[tokio::test]
async fn http_failover_reissues_the_cookie_over_real_sockets() {
    let backends = http_backends(&["a", "b"]).await;
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky()).await;
    let home = get(proxy, loopback(1), None).await;
    let cookie = home.cookie.unwrap();
    lb.mark_down(&home.backend).unwrap();

    let failover = get(proxy, loopback(1), Some(&cookie)).await;
    assert_eq!(failover.status, StatusCode::OK);
    assert_ne!(failover.backend, home.backend);
    let fresh = failover.cookie.expect("the failover re-issues the cookie");
    assert_ne!(fresh, cookie);
    let after = get(proxy, loopback(1), Some(&fresh)).await;
    assert_eq!((after.backend, after.cookie), (failover.backend, None));
}

#[tokio::test]
async fn http_the_backend_never_sees_the_sticky_cookie() {
    let backends = http_backends(&["a", "b"]).await;
    let (proxy, _) = gateway(&backends, ClientIp::new(), sticky()).await;
    let cookie = get(proxy, loopback(1), None).await.cookie.unwrap();
    let req = Request::get(format!("http://{proxy}/headers"))
        .header(COOKIE, format!("theme=dark; {cookie}"))
        .body(Full::default())
        .unwrap();
    let res = support::client().request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("cookie: theme=dark\n"), "{body}");
    assert!(!body.contains("lb="), "{body}");
}

/// Rotation on a live gateway, the rolling procedure of docs/sticky.md run
/// against requests in flight: clients hammer the gateway with their
/// cookies while the new secret is added as a previous one, then promoted.
/// Every answer comes from the client's own backend (the requests come from
/// one address, so IP affinity alone would put everyone on one backend),
/// every client's cookie is re-issued under the new secret exactly once,
/// and once the old secret is retired the re-issued cookies still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rotating_the_secret_under_load_keeps_every_client_on_its_backend() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const CLIENTS: u8 = 16;
    let backends = http_backends(&["a", "b", "c"]).await;
    let old: Secret = OLD_SECRET.parse().unwrap();
    let new = secret();
    let secrets = Secrets::new(old.clone());
    let sticky = StickyCookie::new("lb", secrets.clone()).unwrap();
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky).await;

    // Each client's first answer, from its own address: a backend and a
    // cookie made with the old secret.
    let mut clients = Vec::new();
    for i in 1..=CLIENTS {
        let first = get(proxy, loopback(i), None).await;
        clients.push((first.backend, first.cookie.unwrap()));
    }
    // From here on every request comes from one address.
    let shared = loopback(250);
    let by_ip = lb.pick(Some(&[127, 0, 0, 250])).unwrap().id().to_owned();
    assert!(
        clients.iter().any(|(home, _)| *home != by_ip),
        "some client's backend differs from what IP affinity picks"
    );

    let requests = Arc::new(AtomicUsize::new(0));
    let rotated = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (home, cookie) in clients {
        let (requests, rotated) = (requests.clone(), rotated.clone());
        tasks.push(tokio::spawn(async move {
            let (mut cookie, mut reissued, mut after_rotation) = (cookie, 0, 0);
            while after_rotation < 3 {
                let started_after = rotated.load(Ordering::SeqCst);
                let answer = get(proxy, shared, Some(&cookie)).await;
                assert_eq!(answer.status, StatusCode::OK);
                assert_eq!(answer.backend, home, "a client lost its backend");
                if let Some(fresh) = answer.cookie {
                    cookie = fresh;
                    reissued += 1;
                }
                requests.fetch_add(1, Ordering::SeqCst);
                after_rotation += usize::from(started_after);
            }
            (home, cookie, reissued)
        }));
    }
    let wait_for = |n: usize| {
        let requests = requests.clone();
        async move {
            while requests.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let n = usize::from(CLIENTS);
    wait_for(2 * n).await;
    secrets.add_previous(new.clone()).unwrap(); // step 1
    wait_for(4 * n).await;
    secrets.rotate(new.clone()).unwrap(); // step 2
    rotated.store(true, Ordering::SeqCst);

    let new_only = StickyCookie::new("lb", new).unwrap();
    let mut after = Vec::new();
    for task in tasks {
        let (home, cookie, reissued) = task.await.unwrap();
        assert_eq!(reissued, 1, "re-issued once, under the new secret");
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, cookie.parse().unwrap());
        assert_eq!(new_only.verify(&headers).unwrap().id(), home);
        after.push((home, cookie));
    }
    assert!(requests.load(Ordering::SeqCst) >= 7 * n);

    assert!(secrets.retire(&old)); // step 3
    for (home, cookie) in after {
        let answer = get(proxy, shared, Some(&cookie)).await;
        assert_eq!((answer.backend, answer.cookie), (home, None));
    }
}

async fn hello(ws: &mut WebSocketStream<TcpStream>) -> String {
    let text = next_text(ws).await;
    text.strip_prefix("hello from ")
        .unwrap_or_else(|| panic!("unexpected greeting {text:?}"))
        .to_owned()
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the backend answers within 5 s")
            .expect("the connection stays open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    }
}

#[tokio::test]
async fn websocket_the_101_carries_the_cookie_and_a_reconnect_from_another_ip_lands_on_the_same_backend(
) {
    let backends = ws_backends(&["game-a", "game-b"]).await;
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky()).await;

    let (mut ws, res) = support::ws_connect(proxy, loopback(1), None).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let home = hello(&mut ws).await;
    let cookie = support::cookie_pair(&res).expect("the 101 carries Set-Cookie");
    // The session works through the gateway.
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!("{home}: ping"));
    ws.close(None).await.unwrap();

    let moved = moved_client(&lb, loopback(1));
    let (mut ws, _) = support::ws_connect(proxy, moved, None).await.unwrap();
    assert_ne!(hello(&mut ws).await, home, "IP affinity moves the client");
    ws.close(None).await.unwrap();

    let (mut ws, res) = support::ws_connect(proxy, moved, Some(&format!("x=1; {cookie}")))
        .await
        .unwrap();
    assert_eq!(hello(&mut ws).await, home, "the cookie keeps it");
    assert_eq!(support::cookie_pair(&res), None);
    ws.send(Message::text("cookies?")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        "x=1",
        "the sticky cookie is stripped"
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_failover_reissues_the_cookie_on_the_101() {
    let backends = ws_backends(&["game-a", "game-b"]).await;
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky()).await;
    let (mut ws, res) = support::ws_connect(proxy, loopback(1), None).await.unwrap();
    let home = hello(&mut ws).await;
    let cookie = support::cookie_pair(&res).unwrap();
    ws.close(None).await.unwrap();

    lb.mark_down(&home).unwrap();
    let moved = loopback(7);
    let (mut ws, res) = support::ws_connect(proxy, moved, Some(&cookie))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let failover = hello(&mut ws).await;
    assert_ne!(failover, home);
    let fresh = support::cookie_pair(&res).expect("the failover's 101 re-issues the cookie");
    assert_ne!(fresh, cookie);
    ws.close(None).await.unwrap();

    // Back up, the old backend does not take the client back from its new
    // one: the fresh cookie holds.
    lb.mark_up(&home).unwrap();
    let (mut ws, res) = support::ws_connect(proxy, loopback(1), Some(&fresh))
        .await
        .unwrap();
    assert_eq!(hello(&mut ws).await, failover);
    assert_eq!(support::cookie_pair(&res), None);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_a_forged_cookie_is_balanced_as_no_cookie() {
    let backends = ws_backends(&["game-a", "game-b"]).await;
    let (proxy, lb) = gateway(&backends, ClientIp::new(), sticky()).await;
    let expected = lb.pick(Some(&[127, 0, 0, 1])).unwrap().id().to_owned();
    let other = backends.iter().find(|(id, _)| *id != expected).unwrap();
    // Whatever the cookie says, including the other backend's id or
    // address, the client lands where IP affinity puts it.
    for forged in [
        format!("lb={}", other.0),
        format!("lb={}", other.1),
        format!("lb={}", "A".repeat(71)),
        format!(
            "lb={}",
            StickyCookie::new("lb", Secret::generate().unwrap())
                .unwrap()
                .token_at(&other.0, SystemTime::now())
                .unwrap()
        ),
    ] {
        let (mut ws, res) = support::ws_connect(proxy, loopback(1), Some(&forged))
            .await
            .unwrap();
        assert_eq!(hello(&mut ws).await, expected, "{forged}");
        assert!(support::cookie_pair(&res).is_some());
        ws.close(None).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Review fixes: tokens bound to the cookie name, lifetimes bounded by the
// current max_age, browser cookie rules, long default ids.
// ---------------------------------------------------------------------------

mod hardening {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use tower_lb::sticky::{SameSite, Secret, StickyCookie};
    use tower_lb::{Backend, Error};

    fn shared() -> Secret {
        // One secret shared by two pools.
        super::SECRET.parse().unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_token_for_one_cookie_name_does_not_verify_under_another() {
        let api = StickyCookie::new("lb_api", shared()).unwrap();
        let ws = StickyCookie::new("lb_ws", shared()).unwrap();
        let token = api.token_at("game-1", at(1_000)).unwrap();
        assert!(api.verify_token_at(token.as_bytes(), at(1_000)).is_some());
        assert!(ws.verify_token_at(token.as_bytes(), at(1_000)).is_none());
    }

    #[test]
    fn turning_max_age_on_renews_session_cookies_already_out() {
        let session = StickyCookie::new("lb", shared()).unwrap();
        let token = session.token_at("a", at(1_000)).unwrap();
        let bounded = StickyCookie::new("lb", shared())
            .unwrap()
            .max_age(Duration::from_secs(60))
            .unwrap();
        let verified = bounded
            .verify_token_at(token.as_bytes(), at(2_000))
            .unwrap();
        assert_eq!(verified.id(), "a");
        assert!(verified.should_reissue());
    }

    #[test]
    fn shortening_max_age_renews_cookies_made_for_longer() {
        let long = StickyCookie::new("lb", shared())
            .unwrap()
            .max_age(Duration::from_secs(300 * 86_400))
            .unwrap();
        let token = long.token_at("a", at(1_000)).unwrap();
        let short = StickyCookie::new("lb", shared())
            .unwrap()
            .max_age(Duration::from_secs(60))
            .unwrap();
        assert!(short
            .verify_token_at(token.as_bytes(), at(2_000))
            .unwrap()
            .should_reissue());
        // A fresh cookie of the current lifetime is not renewed at once.
        let fresh = short.token_at("a", at(2_000)).unwrap();
        assert!(!short
            .verify_token_at(fresh.as_bytes(), at(2_001))
            .unwrap()
            .should_reissue());
    }

    #[test]
    fn same_site_none_and_secure_prefixes_force_secure() {
        let none = StickyCookie::new("lb", shared())
            .unwrap()
            .same_site(SameSite::None)
            .secure(false);
        let set_cookie = none.set_cookie_at("a", at(1)).unwrap();
        assert!(
            set_cookie.to_str().unwrap().contains("; Secure"),
            "{set_cookie:?}"
        );
        for name in ["__Secure-lb", "__Host-lb"] {
            let cookie = StickyCookie::new(name, shared()).unwrap().secure(false);
            let value = cookie.set_cookie_at("a", at(1)).unwrap();
            assert!(
                value.to_str().unwrap().contains("; Secure"),
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn host_prefixed_cookies_refuse_a_domain_or_another_path() {
        let host = || StickyCookie::new("__Host-lb", shared()).unwrap();
        assert!(matches!(
            host().domain("example.com"),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(matches!(
            host().path("/app"),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(host().path("/").is_ok());
    }

    #[test]
    fn a_default_id_longer_than_a_cookie_can_name_is_refused_with_a_hint() {
        let host = format!("{}.example", "a".repeat(250));
        let err = Backend::new(&format!("http://{host}:65535")).unwrap_err();
        assert!(matches!(err, Error::InvalidBackendId { .. }), "{err:?}");
        assert!(err.to_string().contains("Backend::with_id"));
    }
}
