//! One AMQP connection and the long-lived channels on it.

use crate::broker_url::BrokerUrl;
use crate::error::{Error, Result};
use crate::transport::spec::{ExchangeKind as SpecKind, ExchangeSpec, events_exchange};
use lapin::ExchangeKind;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use std::sync::Mutex;

/// Connection events, as lapin streams them.
pub(super) type EventStream =
    std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>;

/// One established connection and its confirm-mode publisher channel.
pub(crate) struct Live {
    pub(super) conn: Connection,
    /// One confirm-mode channel shared by all publishes of a client: lapin multiplexes
    /// concurrent publishes on it and resolves each confirm separately.
    /// Replaced when the broker closes it to refuse one publish (a 403, a 406).
    publisher: Mutex<lapin::Channel>,
    /// A channel without confirms for RPC replies: transient answers whose loss the caller's
    /// deadline covers, so waiting for (or tracking) a confirm per reply would be wasted work.
    /// Replaced when the broker closes it to refuse one reply.
    /// Opened with the first reply: a client that never answers a request (a producer, a
    /// caller) never opens it.
    #[cfg(feature = "service")]
    replier: tokio::sync::OnceCell<Mutex<lapin::Channel>>,
    /// Increases with every reconnection.
    pub(crate) generation: u64,
    /// The broker address, password redacted.
    pub(crate) url: String,
    /// The broker address it connected to.
    #[cfg(feature = "service")]
    pub(crate) address: BrokerUrl,
    /// Connection events, subscribed to right after connecting so that no failure is missed
    /// (lapin only emits events while a listener exists); the supervisor takes it.
    pub(super) events: Mutex<Option<EventStream>>,
}

impl Live {
    /// Connects to `url`, opens the publisher channel and declares tchu's exchange.
    pub(super) async fn open(
        url: &BrokerUrl,
        name: &str,
        ca_pem: Option<&str>,
        generation: u64,
    ) -> Result<Self> {
        let conn = connect(url, name, ca_pem).await?;
        let events: EventStream = Box::pin(conn.events_listener());
        let publisher = confirm_channel(&conn).await?;
        declare_exchange(&publisher).await?;
        Ok(Self {
            conn,
            publisher: Mutex::new(publisher),
            #[cfg(feature = "service")]
            replier: tokio::sync::OnceCell::new(),
            generation,
            url: url.to_string(),
            #[cfg(feature = "service")]
            address: url.clone(),
            events: Mutex::new(Some(events)),
        })
    }

    /// The channel publishes go out on.
    pub(super) fn publisher(&self) -> lapin::Channel {
        self.publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the publisher channel after the broker closed it, unless another task already
    /// did. The connection and everything else on it (consumers, replies) stay as they are.
    pub(super) async fn reopen_publisher(&self, broken: &lapin::Channel) -> Result<()> {
        let fresh = confirm_channel(&self.conn).await?;
        swap_if(&self.publisher, broken, fresh).await;
        Ok(())
    }

    /// The channel RPC replies go out on.
    #[cfg(feature = "service")]
    pub(super) async fn replier(&self) -> Result<lapin::Channel> {
        let slot = self
            .replier
            .get_or_try_init(|| async { Ok::<_, Error>(Mutex::new(self.channel().await?)) })
            .await?;
        Ok(slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Replaces the reply channel after the broker closed it to refuse one reply.
    #[cfg(feature = "service")]
    pub(super) async fn reopen_replier(&self, broken: &lapin::Channel) -> Result<()> {
        // `broken` came from the slot, so the slot is there; without one, nothing to replace.
        let Some(slot) = self.replier.get() else {
            return Ok(());
        };
        let fresh = self.channel().await?;
        swap_if(slot, broken, fresh).await;
        Ok(())
    }

    /// A fresh channel without confirms.
    pub(super) async fn channel(&self) -> Result<lapin::Channel> {
        self.conn
            .create_channel()
            .await
            .map_err(Error::amqp("channel.open"))
    }

    /// Whether the connection still looks up.
    pub(super) fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// The largest frame the broker takes on this connection, if it said.
    #[cfg(feature = "service")]
    pub(crate) fn frame_max(&self) -> Option<usize> {
        Some(self.conn.configuration().frame_max() as usize).filter(|f| *f > 0)
    }
}

/// Opens the connection itself (through the frame guard), over TLS with an extra CA when one
/// is given.
async fn connect(url: &BrokerUrl, name: &str, ca_pem: Option<&str>) -> Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("tchu:{name}")));
    connect_with(url, props, ca_pem).await
}

/// Opens a connection with `props` (through the frame guard).
pub(super) async fn connect_with(
    url: &BrokerUrl,
    props: ConnectionProperties,
    ca_pem: Option<&str>,
) -> Result<Connection> {
    let tls = url.is_tls();
    if tls && !cfg!(feature = "tls") {
        return Err(Error::FeatureMissing {
            feature: "tls",
            needed_for: format!("the amqps:// address {url}"),
        });
    }
    let connect_error = |source: lapin::Error| Error::Connect {
        url: url.to_string(),
        source: source.into(),
    };
    let tls_config = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: ca_pem.map(str::to_owned),
    };
    super::guard::connect_guarded(url.uri().clone(), props, tls_config)
        .await
        .map_err(connect_error)
}

/// A fresh channel in confirm mode.
pub(super) async fn confirm_channel(conn: &Connection) -> Result<lapin::Channel> {
    let ch = conn
        .create_channel()
        .await
        .map_err(Error::amqp("channel.open"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::amqp("confirm.select"))?;
    Ok(ch)
}

/// Puts `fresh` in `slot` if it still holds `broken`; otherwise closes `fresh`.
async fn swap_if(slot: &Mutex<lapin::Channel>, broken: &lapin::Channel, fresh: lapin::Channel) {
    let spare = {
        let mut current = slot.lock().unwrap_or_else(|e| e.into_inner());
        if current.id() == broken.id() {
            *current = fresh;
            None
        } else {
            Some(fresh)
        }
    };
    if let Some(spare) = spare {
        let _ = spare.close(200, "not needed".into()).await;
    }
}

/// Declares [`EXCHANGE`] as [`events_exchange`] describes it.
pub(super) async fn declare_exchange(ch: &lapin::Channel) -> Result<()> {
    declare_spec_exchange(ch, &events_exchange()).await
}

/// Declares an exchange of the topology: durable, no arguments.
pub(super) async fn declare_spec_exchange(ch: &lapin::Channel, x: &ExchangeSpec) -> Result<()> {
    let kind = match x.kind {
        SpecKind::Topic => ExchangeKind::Topic,
        SpecKind::Headers => ExchangeKind::Headers,
    };
    ch.exchange_declare(
        super::short(&x.name, "exchange")?,
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(Error::amqp("exchange.declare"))
}
