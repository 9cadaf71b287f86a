//! Connecting lapin through the guard. lapin's `Connection::connector` takes the stream type
//! from its runtime's reactor, so the runtime here is async-rs's tokio executor beside a
//! reactor whose TCP streams are [`FrameGuard`]s; over TLS, the guard sits above TLS, where
//! the frames are plaintext.

use super::stream::FrameGuard;
use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use futures_lite::io::{AsyncRead, AsyncWrite};
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A TCP stream of tokio's reactor, as async-rs wraps it.
type Plain = <Tokio as Reactor>::TcpStream;
/// What lapin reads and writes: the guard over the plaintext stream (TLS, if any, under it).
type Guarded = FrameGuard<AsyncTcpStream<Plain>>;
type Kit = RuntimeParts<Tokio, GuardedReactor>;

/// tokio's reactor, handing out guarded streams.
#[derive(Clone, Debug)]
struct GuardedReactor(Tokio);

impl Reactor for GuardedReactor {
    type TcpStream = Guarded;
    type Sleep = <Tokio as Reactor>::Sleep;

    // Weaker bounds than the trait's (whose marker trait async-rs does not export): lapin
    // never registers raw handles.
    fn register<H: io::Read + io::Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Err::<Guarded, _>(io::Error::other(
            "tchu's guarded reactor registers no raw handles",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures_lite::Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Guarded>> + Send + 'static {
        let plain = self.0.tcp_connect_addr(addr);
        async move { Ok(FrameGuard::new(AsyncTcpStream::Plain(plain.await?))) }
    }
}

/// Opens a lapin connection whose every read goes through tchu's frame guard, so that no
/// message a publisher can write makes lapin's parser fail the connection (or overflow its
/// I/O thread's stack). `tls` is used for `amqps://` URIs.
///
/// # Errors
/// lapin's, as `Connection::connect_uri_with_config` gives them; an I/O error outside a tokio
/// runtime.
pub async fn connect_guarded(
    uri: AMQPUri,
    props: ConnectionProperties,
    tls: OwnedTLSConfig,
) -> lapin::Result<Connection> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let tokio = Tokio::default().with_handle(handle);
    let runtime: Runtime<Kit> = Runtime::new(RuntimeParts::new(
        tokio.clone(),
        GuardedReactor(tokio.clone()),
    ));
    let open = async move |uri: AMQPUri, runtime: Runtime<Kit>| {
        open_stream(&uri, &tls, &tokio, &runtime)
            .await
            .map_err(lapin::Error::from)
    };
    Connection::connector(uri, runtime, open, props).await
}

/// A TCP connection to the broker, TLS on it for `amqps://`, and the guard above both.
async fn open_stream(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    tokio: &Tokio,
    runtime: &Runtime<Kit>,
) -> io::Result<AsyncTcpStream<Guarded>> {
    let addrs = runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
    let plain = AsyncTcpStream::connect(tokio, addrs).await?;
    let stream = match uri.scheme {
        AMQPScheme::AMQP => plain,
        AMQPScheme::AMQPS if cfg!(feature = "tls") => {
            plain.into_tls(&uri.authority.host, tls.as_ref()).await?
        }
        // Without a TLS backend, tcp-stream would go on in plaintext.
        AMQPScheme::AMQPS => {
            return Err(io::Error::other("amqps:// needs tchu's `tls` feature"));
        }
    };
    Ok(AsyncTcpStream::Plain(FrameGuard::new(stream)))
}
