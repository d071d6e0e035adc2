//! A stand-in for a load balancer that restarts: a TCP relay between the agent and the
//! gateway whose connections can all be dropped at once, with no WebSocket close on either
//! side. The demo cuts the legacy meter's tunnel with it; the resume benchmark cuts a hundred.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Cutter {
    pub addr: SocketAddr,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Cutter {
    /// Listen on a free 127.0.0.1 port and relay each connection to `to`.
    pub async fn start(to: SocketAddr) -> std::io::Result<Cutter> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tasks = live.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                let _ = a.set_nodelay(true);
                let relay = tokio::spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(to).await {
                        let _ = b.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
                if let Ok(mut t) = tasks.lock() {
                    t.retain(|h| !h.is_finished());
                    t.push(relay);
                }
            }
        });
        Ok(Cutter { addr, live, accept })
    }

    /// Drop every connection through us now: both sockets closed, nothing said. Returns how
    /// many there were.
    pub fn cut(&self) -> usize {
        let Ok(mut t) = self.live.lock() else {
            return 0;
        };
        let n = t.iter().filter(|h| !h.is_finished()).count();
        for h in t.drain(..) {
            h.abort();
        }
        n
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
