//! A TCP proxy in front of a service the tests share (RabbitMQ, PostgreSQL), to take it away
//! from one test's processes without stopping it for every other test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy in front of RabbitMQ that a test can cut and restore, to take the broker away
/// from one API without stopping the broker every other test uses. It can also hold back
/// everything the server sends ([`TcpProxy::stall`]): publishes still reach the broker, but
/// their confirms (and replies) do not come back — a confirm lost in flight.
pub struct TcpProxy {
    pub port: u16,
    up: AtomicBool,
    /// Cancelled to drop every live connection; replaced on restore.
    cut: std::sync::Mutex<CancellationToken>,
    /// True while server-to-client bytes are held back.
    stalled: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`, e.g. [`broker_address`](crate::broker_address)).
    pub async fn start(upstream: String) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Arc::new(Self {
            port: listener.local_addr().expect("addr").port(),
            up: AtomicBool::new(true),
            cut: std::sync::Mutex::new(CancellationToken::new()),
            stalled: tokio::sync::watch::channel(false).0,
        });
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !p.up.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let cut = p.cut.lock().expect("lock").clone();
                let stalled = p.stalled.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = copy_unless_stalled(&mut server_read, &mut client_write, stalled);
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        proxy
    }

    /// The broker "goes down": live connections drop, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.lock().expect("lock").cancel();
    }

    /// The broker "comes back".
    pub fn restore(&self) {
        *self.cut.lock().expect("lock") = CancellationToken::new();
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds back what the server sends (confirms, replies, heartbeats) until [`resume`].
    ///
    /// [`resume`]: TcpProxy::resume
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, pausing (with the bytes read so far held) while `stalled` is true.
async fn copy_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
