//! A loopback backend that can be stopped and started again on the same
//! port, to show health checks and passive ejection at work.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A backend answering `x-backend: NAME`; `POST` reads the whole request
/// body before answering; `/health` answers `200 ok`.
pub struct StoppableBackend {
    name: &'static str,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl StoppableBackend {
    /// Starts it on an ephemeral loopback port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        Ok(StoppableBackend {
            name,
            addr,
            task: Some(tokio::spawn(serve(listener, name))),
        })
    }

    /// Where it listens (also while stopped: it comes back there).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection: connects are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.task = Some(tokio::spawn(serve(listener, self.name)));
        Ok(())
    }
}

impl Drop for StoppableBackend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, name: &'static str) {
    // Connections live in the set: aborting this task drops the set, which
    // aborts them too (a stopped backend keeps no keep-alive connection).
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let post = req.method() == http::Method::POST;
                let health = req.uri().path() == "/health";
                let body = if post {
                    match req.into_body().collect().await {
                        Ok(body) => format!("{name}: read {} bytes\n", body.to_bytes().len()),
                        Err(_) => format!("{name}: the body broke off\n"),
                    }
                } else if health {
                    "ok\n".to_owned()
                } else {
                    format!("{name}\n")
                };
                let res = Response::builder()
                    .status(StatusCode::OK)
                    .header("x-backend", name)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid");
                Ok::<_, Infallible>(res)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
