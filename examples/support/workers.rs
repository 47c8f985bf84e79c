//! nginx's worker model for the gateway: one thread per worker, each with a
//! current-thread tokio runtime, its own listening socket on the shared
//! address (`SO_REUSEPORT`: the kernel spreads new connections over them)
//! and its own upstream connection pool. A request is then accepted,
//! balanced, forwarded and answered on one thread: no work stealing, no
//! wake-ups handed between threads, no pool shared across cores. The
//! load balancer itself (member set, counters, health) is shared by all.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};

/// `count` sockets bound to `addr`, each with `SO_REUSEPORT` where the
/// platform has it (elsewhere only one socket can bind: ask for one). With
/// port 0 the first socket picks the port and the others share it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpSocket>> {
    let mut sockets: Vec<TcpSocket> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Runs `serve` on each socket, each on a thread of its own with a
/// current-thread runtime. `serve` builds everything per worker (the stack,
/// and with it the upstream pool), so that nothing but the load balancer is
/// shared between threads. The threads run until the process exits.
pub fn spawn<F, Fut>(sockets: Vec<TcpSocket>, serve: F) -> io::Result<Vec<JoinHandle<()>>>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let serve = serve.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("gateway-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        match socket.listen(1024) {
                            Ok(listener) => serve(listener).await,
                            Err(e) => eprintln!("gateway worker {i}: listen: {e}"),
                        }
                    })
                })
        })
        .collect()
}
