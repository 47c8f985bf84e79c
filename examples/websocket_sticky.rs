//! The source article's WebSocket case: a game client reconnects after a
//! network drop from another IP address (Wi-Fi to 4G), and an inserted
//! sticky cookie brings it back to the backend that holds its session,
//! where affinity by client IP would not.
//!
//! ```text
//! cargo run --example websocket_sticky
//! ```
//!
//! A gateway on loopback balances two WebSocket echo backends by client IP
//! (consistent hashing on `ClientIp`) and inserts a sticky cookie. The demo
//! then, by itself, and exits:
//!
//! 1. connects from 127.0.0.1 and is told its backend; the `101 Switching
//!    Protocols` carries the cookie;
//! 2. reconnects from another address (127.0.0.x: Linux routes all of
//!    127.0.0.0/8 to loopback) without the cookie: IP affinity sends it
//!    elsewhere, and the session would be lost;
//! 3. reconnects from that address with the cookie: the same backend;
//! 4. marks that backend down and reconnects with the cookie: it fails over
//!    to the other backend and gets a fresh cookie, which then holds.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use futures_util::StreamExt;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tower::ServiceBuilder;
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::{ClientIp, Secret, StickyCookie};
use tower_lb::{Backend, LoadBalancer, Strategy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // In production, read the secret from your secret store (base64, made
    // once with `openssl rand -base64 32`) and give every gateway replica
    // the same one, so that each honours the cookies the others set.
    let secret = match std::env::var("TOWER_LB_SECRET") {
        Ok(encoded) => encoded.parse::<Secret>()?,
        Err(_) => Secret::generate()?,
    };
    let sticky = StickyCookie::new("lb", secret)?;

    let mut backends = Vec::new();
    for name in ["game-a", "game-b"] {
        let addr = support::spawn_ws_backend(name).await?;
        println!("{name:>8}  ws://{addr}");
        backends.push(Backend::new(&format!("http://{addr}"))?.with_id(name)?);
    }
    let lb = LoadBalancer::new(Strategy::consistent_hash(), backends)?;

    let stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(
            strip_hop_by_hop_response::<Incoming>,
        ))
        .layer(
            LoadBalanceLayer::new(lb.clone())
                .key(ClientIp::new())
                .sticky(sticky),
        )
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    println!(" gateway  ws://{proxy}  (affinity: client IP; sticky cookie `lb`)\n");
    tokio::spawn(support::serve_proxy(listener, stack));

    // 1. The first connection.
    let (mut ws, res) = support::ws_connect(proxy, HOME, None).await?;
    let home_backend = hello(&mut ws).await?;
    let cookie = support::cookie_pair(&res).ok_or("the 101 response has no Set-Cookie")?;
    println!("1. from {HOME}: {} -> {home_backend}", res.status());
    println!("   Set-Cookie: {}", shown(&res));
    ws.close(None).await?;

    // The network changes: find a new address that IP affinity sends to
    // the other backend (the key is the address's bytes, as ClientIp makes
    // it).
    let moved = (2..=254)
        .map(|n| Ipv4Addr::new(127, 0, 0, n))
        .find(|ip| {
            lb.pick(Some(&ip.octets()))
                .is_ok_and(|m| m.id() != home_backend)
        })
        .ok_or("no address hashes to the other backend")?;
    let moved = IpAddr::V4(moved);

    // 2. Without the cookie, affinity by IP loses the session.
    let (mut ws, _) = support::ws_connect(proxy, moved, None).await?;
    let by_ip = hello(&mut ws).await?;
    println!("2. from {moved}, no cookie: -> {by_ip}   (IP affinity: the session is lost)");
    ws.close(None).await?;
    assert_ne!(by_ip, home_backend);

    // 3. With the cookie, the reconnect lands on its backend.
    let with_other_cookies = format!("theme=dark; {cookie}");
    let (mut ws, res) = support::ws_connect(proxy, moved, Some(&with_other_cookies)).await?;
    let back = hello(&mut ws).await?;
    let upstream_saw = ask(&mut ws, "cookies?").await?;
    println!("3. from {moved}, with the cookie: -> {back}   (same backend, session kept)");
    println!("   the backend saw Cookie: {upstream_saw}   (the sticky cookie is stripped)");
    ws.close(None).await?;
    assert_eq!(back, home_backend);
    assert!(
        support::cookie_pair(&res).is_none(),
        "a valid cookie is not re-issued"
    );
    assert_eq!(upstream_saw, "theme=dark");

    // 4. Its backend goes down: the reconnect fails over, with a new cookie.
    lb.mark_down(&home_backend)?;
    println!("\n   {home_backend} marked down");
    let (mut ws, res) = support::ws_connect(proxy, moved, Some(&cookie)).await?;
    let failover = hello(&mut ws).await?;
    let fresh = support::cookie_pair(&res).ok_or("the failover response re-issues no cookie")?;
    println!("4. from {moved}, with the old cookie: -> {failover}   (failed over)");
    println!("   Set-Cookie: {}   (re-issued)", shown(&res));
    ws.close(None).await?;
    assert_ne!(failover, home_backend);
    assert_ne!(fresh, cookie);

    let (mut ws, _) = support::ws_connect(proxy, HOME, Some(&fresh)).await?;
    let stays = hello(&mut ws).await?;
    println!("5. from {HOME}, with the fresh cookie: -> {stays}   (it holds)");
    ws.close(None).await?;
    assert_eq!(stays, failover);

    // Forged cookies count as none.
    let forged = format!("lb={}", "A".repeat(71));
    let (mut ws, res) = support::ws_connect(proxy, HOME, Some(&forged)).await?;
    let balanced = hello(&mut ws).await?;
    println!("6. from {HOME}, with a forged cookie: -> {balanced}   (ignored: balanced as usual, given a real cookie)");
    ws.close(None).await?;
    assert!(support::cookie_pair(&res).is_some());

    println!("\ndone: the reconnect from another address kept its backend, and failover re-issued the cookie");
    Ok(())
}

/// The backend's greeting, `hello from NAME`: the backend's name.
async fn hello(ws: &mut WebSocketStream<TcpStream>) -> Result<String, BoxError> {
    let greeting = next_text(ws).await?;
    Ok(greeting
        .strip_prefix("hello from ")
        .ok_or_else(|| format!("unexpected greeting {greeting:?}"))?
        .to_owned())
}

async fn ask(ws: &mut WebSocketStream<TcpStream>, question: &str) -> Result<String, BoxError> {
    use futures_util::SinkExt;
    ws.send(Message::text(question)).await?;
    next_text(ws).await
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Result<String, BoxError> {
    let wait = std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout(wait, ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the connection closed".into()),
        }
    }
}

/// The `Set-Cookie` header with its token cut short: enough to tell two
/// apart.
fn shown<B>(res: &http::Response<B>) -> String {
    let value = res
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
    let head: String = pair.chars().take(15).collect();
    format!("{head}…;{attributes}")
}
