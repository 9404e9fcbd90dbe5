//! A TCP proxy on loopback that a test can cut and restore, to take a dependency (Postgres,
//! Redis, a broker) away from a running app without touching the shared server; it can also
//! hold back the server's replies (a request that reached the server whose answer the client
//! never sees, as when the client dies mid-call).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy from a local port to `target`.
pub struct TcpProxy {
    /// The address to connect to instead of the target.
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    held: Arc<watch::Sender<bool>>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let (held, _) = watch::channel(false);
        let held = Arc::new(held);
        let accept_up = up.clone();
        let accept_held = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*accept_up.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut = accept_up.subscribe();
                let held = accept_held.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let requests = tokio::io::copy(&mut client_read, &mut server_write);
                    let replies = async move {
                        let mut held = held;
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let read = server_read.read(&mut buffer).await.unwrap_or(0);
                            if read == 0 {
                                return;
                            }
                            if held.wait_for(|held| !*held).await.is_err() {
                                return;
                            }
                            if client_write.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        () = replies => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, held }
    }

    /// Closes every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Keeps forwarding requests but holds back the server's replies until
    /// [`TcpProxy::release_replies`].
    pub fn hold_replies(&self) {
        self.held.send_replace(true);
    }

    /// Forwards the server's replies again, the held ones first.
    pub fn release_replies(&self) {
        self.held.send_replace(false);
    }
}
