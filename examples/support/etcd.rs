//! Service discovery on etcd, for `examples/etcd_discovery.rs` and
//! `tests/scale_out_etcd.rs`: a small client for etcd's v3 JSON gateway
//! (`/v3/kv/put`, `/v3/kv/range`, `/v3/watch`, `/v3/lease/grant`,
//! `/v3/lease/keepalive`; keys and values in base64), backend registration
//! under a lease, a discovery feed of `tower::discover::Change`s, and a
//! throw-away etcd server on loopback.
//!
//! The layout in etcd: one key per backend, `PREFIX + id`, whose value is
//! `{"uri": "http://127.0.0.1:8081", "weight": 1}`, attached to a lease the
//! backend keeps alive. A backend that dies stops renewing; when the lease
//! expires etcd deletes the key and every watcher sees it go.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_lb::Backend;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client of one etcd server's JSON gateway.
#[derive(Clone)]
pub struct Etcd {
    endpoint: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Etcd {
    /// `endpoint` is the client URL, such as `http://127.0.0.1:2379`.
    pub fn new(endpoint: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Etcd {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn post(&self, path: &str, body: Value) -> Result<hyper::body::Incoming, BoxError> {
        let req = Request::post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .body(Full::from(body.to_string()))?;
        let res = tokio::time::timeout(Duration::from_secs(2), self.client.request(req))
            .await
            .map_err(|_| "etcd did not answer within 2 s")??;
        if !res.status().is_success() {
            let status = res.status();
            let text = res.into_body().collect().await?.to_bytes();
            return Err(
                format!("etcd {path}: {status}: {}", String::from_utf8_lossy(&text)).into(),
            );
        }
        Ok(res.into_body())
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, BoxError> {
        let body = self.post(path, body).await?;
        let bytes = tokio::time::timeout(Duration::from_secs(2), body.collect())
            .await
            .map_err(|_| "etcd's answer did not finish within 2 s")??
            .to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Sets `key` to `value`, attached to `lease` if any.
    pub async fn put(&self, key: &str, value: &str, lease: Option<i64>) -> Result<(), BoxError> {
        let mut body = json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) });
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", body).await.map(drop)
    }

    /// Every key under `prefix` with its value, and the revision they were
    /// read at.
    pub async fn range_prefix(
        &self,
        prefix: &str,
    ) -> Result<(i64, Vec<(String, String)>), BoxError> {
        let answer = self
            .call(
                "/v3/kv/range",
                json!({ "key": base64(prefix.as_bytes()), "range_end": base64(&prefix_end(prefix)) }),
            )
            .await?;
        let revision =
            int(&answer["header"]["revision"]).ok_or("a range answer without a revision")?;
        let kvs = answer["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().filter_map(key_value).collect())
            .unwrap_or_default();
        Ok((revision, kvs))
    }

    /// A lease that expires `ttl` seconds after its last renewal; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, BoxError> {
        let answer = self.call("/v3/lease/grant", json!({ "TTL": ttl })).await?;
        int(&answer["ID"]).ok_or_else(|| format!("no lease granted: {answer}").into())
    }

    /// Renews a lease once. `Ok(false)` when etcd no longer knows it (it
    /// expired): the caller must register again.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, BoxError> {
        // The gateway answers a one-message stream: `{"result": {...}}`.
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(int(&answer["result"]["TTL"]).unwrap_or(0) > 0)
    }

    /// Watches every key under `prefix` from `start_revision` on, calling
    /// `on_event` with `(key, Some(value))` for a put and `(key, None)` for a
    /// delete, until the watch breaks (etcd went away) or `on_event` says
    /// stop (`false`).
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
        mut on_event: impl FnMut(String, Option<String>) -> bool,
    ) -> Result<(), BoxError> {
        let create = json!({ "create_request": {
            "key": base64(prefix.as_bytes()),
            "range_end": base64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let mut body = self.post("/v3/watch", create).await?;
        // The gateway streams one JSON object per line.
        let mut buffer = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let message: Value = serde_json::from_slice(&line)?;
                let result = &message["result"];
                if result["canceled"].as_bool() == Some(true) {
                    return Err(format!("the watch was canceled: {message}").into());
                }
                for event in result["events"].as_array().into_iter().flatten() {
                    let Some((key, value)) = key_value(&event["kv"]) else {
                        continue;
                    };
                    let deleted = event["type"].as_str() == Some("DELETE");
                    if !on_event(key, (!deleted).then_some(value)) {
                        return Ok(());
                    }
                }
            }
        }
        Err("etcd closed the watch".into())
    }
}

/// What a backend registers: its URI and weight.
pub fn registration_value(uri: &str, weight: u32) -> String {
    json!({ "uri": uri, "weight": weight }).to_string()
}

/// Registers `key` = `value` under a lease of `ttl` seconds and keeps the
/// lease alive from a task on the current runtime, renewing three times per
/// TTL. While etcd is unreachable it keeps trying; if the lease expired
/// meanwhile it registers again under a new one. Abort the task, or drop
/// the runtime it runs on (a crash), and the key disappears one TTL later:
/// nobody deregisters a dead backend by hand.
pub fn register(etcd: Etcd, key: String, value: String, ttl: i64) -> tokio::task::JoinHandle<()> {
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    tokio::spawn(async move {
        let mut lease = None;
        loop {
            lease = match lease {
                Some(id) => match etcd.keep_alive(id).await {
                    Ok(false) => None,
                    // Renewed, or etcd is away: keep the lease, try again.
                    Ok(true) | Err(_) => Some(id),
                },
                None => None,
            };
            if lease.is_none() {
                if let Ok(id) = etcd.grant(ttl).await {
                    if etcd.put(&key, &value, Some(id)).await.is_ok() {
                        lease = Some(id);
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    })
}

/// A backend as a process of its own: a loopback HTTP server answering
/// with its name (`crate::support::spawn_backend`) and its registration
/// under `prefix + name` with its weight, both on a runtime of their own, so that
/// [`kill`](BackendProcess::kill) stops both at once, as a crash would.
/// Dropping it kills it too.
pub struct BackendProcess {
    runtime: Option<tokio::runtime::Runtime>,
    addr: std::net::SocketAddr,
}

impl BackendProcess {
    pub async fn start(
        etcd: &Etcd,
        prefix: &str,
        name: &str,
        weight: u32,
        ttl: i64,
    ) -> BackendProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the backend");
        let (etcd, key, name) = (etcd.clone(), format!("{prefix}{name}"), name.to_owned());
        let addr = runtime
            .spawn(async move {
                let addr = crate::support::spawn_backend(&name).await?;
                let value = registration_value(&format!("http://{addr}"), weight);
                register(etcd, key, value, ttl);
                Ok::<_, std::io::Error>(addr)
            })
            .await
            .expect("the backend starts")
            .expect("a loopback port for the backend");
        BackendProcess {
            runtime: Some(runtime),
            addr,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A discovery feed over every backend registered under `prefix`: a
/// `tower::discover::Discover` stream of `Change::Insert(id, backend)` and
/// `Change::Remove(id)`, the id being the key without the prefix (so every
/// gateway replica names a backend alike). Follow it with
/// `LoadBalancer::follow`.
///
/// It lists the prefix, then watches it from the next revision; when the
/// watch breaks (etcd restarted) it lists again and sends the difference,
/// so a replica catches up on whatever it missed. Until etcd answers, no
/// change is sent, and the load balancer keeps its last membership. A value
/// that is not a usable backend is logged and treated as a removal.
pub fn discover(etcd: Etcd, prefix: &str) -> EtcdDiscover {
    let (tx, rx) = mpsc::unbounded_channel();
    let prefix = prefix.to_owned();
    let task = tokio::spawn(async move {
        let mut known: HashMap<String, String> = HashMap::new();
        loop {
            if tx.is_closed() {
                return;
            }
            let (revision, listed) = match etcd.range_prefix(&prefix).await {
                Ok(listed) => listed,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let listed: HashMap<String, String> = listed.into_iter().collect();
            let gone: Vec<String> = known
                .keys()
                .filter(|key| !listed.contains_key(*key))
                .cloned()
                .collect();
            for key in gone {
                known.remove(&key);
                send(&tx, &prefix, &key, None);
            }
            let mut listed: Vec<(String, String)> = listed.into_iter().collect();
            listed.sort();
            for (key, value) in listed {
                if known.get(&key) != Some(&value) {
                    send(&tx, &prefix, &key, Some(&value));
                    known.insert(key, value);
                }
            }
            let _ = etcd
                .watch_prefix(&prefix, revision + 1, |key, value| {
                    match &value {
                        Some(value) => known.insert(key.clone(), value.clone()),
                        None => known.remove(&key),
                    };
                    send(&tx, &prefix, &key, value.as_deref())
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    EtcdDiscover { rx, task }
}

/// Sends the change for one key; `false` once nobody follows the feed.
fn send(
    tx: &mpsc::UnboundedSender<Change<String, Backend>>,
    prefix: &str,
    key: &str,
    value: Option<&str>,
) -> bool {
    let id = key.strip_prefix(prefix).unwrap_or(key).to_owned();
    let change = match value.map(parse_backend) {
        Some(Ok(backend)) => Change::Insert(id, backend),
        Some(Err(error)) => {
            eprintln!("etcd: ignoring {key}: {error}");
            Change::Remove(id)
        }
        None => Change::Remove(id),
    };
    tx.send(change).is_ok()
}

fn parse_backend(value: &str) -> Result<Backend, BoxError> {
    let value: Value = serde_json::from_str(value)?;
    let uri = value["uri"].as_str().ok_or("no \"uri\"")?;
    let weight = value["weight"].as_u64().unwrap_or(1);
    let weight = u32::try_from(weight).map_err(|_| "weight out of range")?;
    Ok(Backend::new(uri)?.with_weight(weight)?)
}

/// The stream [`discover`] returns. Dropping it stops the watch.
pub struct EtcdDiscover {
    rx: mpsc::UnboundedReceiver<Change<String, Backend>>,
    task: tokio::task::JoinHandle<()>,
}

impl futures_util::Stream for EtcdDiscover {
    type Item = Result<Change<String, Backend>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl Drop for EtcdDiscover {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A single-member etcd server on loopback ports, its data in a fresh
/// directory, with a fast heartbeat so that one-second leases are allowed
/// and expire on time. Killed (by its process id) and its directory removed
/// when dropped.
pub struct EtcdServer {
    child: Option<Child>,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    binary: PathBuf,
}

impl EtcdServer {
    /// Starts `etcd` (from `$ETCD_BIN`, else the `PATH`) and waits until it
    /// answers.
    pub async fn start() -> Result<EtcdServer, BoxError> {
        let binary = PathBuf::from(std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into()));
        let unique = format!(
            "tower-lb-etcd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let data_dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&data_dir)?;
        let mut server = EtcdServer {
            child: None,
            data_dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            binary,
        };
        // A port found free may be taken before etcd binds it: try again
        // on others, from a clean data directory.
        for _ in 0..2 {
            match server.resume().await {
                Ok(()) => return Ok(server),
                Err(error) if error.to_string().starts_with("cannot run") => return Err(error),
                Err(_) => {
                    let _ = std::fs::remove_dir_all(server.data_dir.join("data"));
                    server.client_port = free_port()?;
                    server.peer_port = free_port()?;
                }
            }
        }
        server.resume().await?;
        Ok(server)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Stops etcd (SIGKILL: as abrupt as a crash); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it
    /// answers.
    pub async fn resume(&mut self) -> Result<(), BoxError> {
        self.stop();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("etcd.log"))?;
        let child = Command::new(&self.binary)
            .arg("--name=tower-lb-test")
            .arg(format!("--data-dir={}", self.data_dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tower-lb-test={peer}"))
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run `{}` ({e}): install Debian's etcd-server (apt-get install etcd-server) or set ETCD_BIN",
                    self.binary.display()
                )
            })?;
        self.child = Some(child);
        let etcd = Etcd::new(&client);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if etcd.put("/tower-lb/ready", "1", None).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(
                    format!("etcd exited with {status}; its log:\n{}", self.log_tail()).into(),
                );
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd did not answer within 15 s; its log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The end of the key range that holds every key starting with `prefix`:
/// the prefix with its last byte incremented (etcd's `WithPrefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: &Value) -> Option<(String, String)> {
    let key = String::from_utf8(unbase64(kv["key"].as_str()?)?).ok()?;
    let value = String::from_utf8(unbase64(kv["value"].as_str().unwrap_or(""))?).ok()?;
    Some((key, value))
}

/// etcd's gateway writes 64-bit integers as JSON strings.
fn int(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as protobuf's JSON mapping writes bytes.
fn base64(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in input.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
