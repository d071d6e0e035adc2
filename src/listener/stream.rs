//! The device-side byte stream: plain TCP or TLS over TCP, one type for the stages after.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum DeviceStream {
    Plain(TcpStream),
    // Boxed: a rustls connection is a few KiB and most deployments terminate TLS in front of us.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for DeviceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            DeviceStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DeviceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DeviceStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            DeviceStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DeviceStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DeviceStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DeviceStream::Plain(s) => s.is_write_vectored(),
            DeviceStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Plain(s) => Pin::new(s).poll_flush(cx),
            DeviceStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            DeviceStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
