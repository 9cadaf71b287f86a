//! The Redis inbox: a claim is `SET key "pending:<token>" NX PX lease`, renewed while the
//! handler runs; success replaces it with `"done:<answer>"` for the retention, failure
//! deletes it (only while it is still this claim).

use super::{ClaimKey, HandlerResult, MAX_CLAIM_WAIT, record, skipped, store_failure};
use crate::error::{Error, Result};
use crate::handler::HandlerError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

/// The key prefix: `tchu:inbox:<queue>:<handler>:<key>`.
const PREFIX: &str = "tchu:inbox:";

/// The prefix of the marker of a key's last forced replay (its token), kept as long as the
/// record: a redelivered forced copy finds it and is a duplicate.
const FORCED_PREFIX: &str = "tchu:inbox-forced:";

/// Claims KEYS[1] for ARGV[1] (lease ARGV[2] ms) unless it is held (`0`) or recorded (`2` and
/// the record) and not forced by a new token ARGV[3] (marker KEYS[2]).
const CLAIM: &str = r"local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 8) == 'pending:' then return {0, ''} end
if v and (ARGV[3] == '' or redis.call('GET', KEYS[2]) == ARGV[3]) then return {2, v} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ''}";

/// Deletes the key only while it holds this claim's token.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1]) else return 0 end";

/// Extends the lease only while the key holds this claim's token.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

pub(crate) struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
}

type StoreResult<T> = std::result::Result<T, HandlerError>;

impl RedisStore {
    pub(super) fn new(url: &str) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| Error::Store(format!("Redis URL: {e}")))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
        })
    }

    /// Connects (and so checks the server answers) at service start.
    pub(super) async fn prepare(&self) -> Result<()> {
        self.connection()
            .await
            .map(drop)
            .map_err(|e| Error::Store(format!("Redis inbox: {e}")))
    }

    /// A multiplexed connection that reconnects by itself.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(3);
        self.conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    async fn conn(&self) -> StoreResult<ConnectionManager> {
        self.connection()
            .await
            .map_err(|e| store_failure("connect to Redis", e))
    }

    /// Claims, runs, records or releases: see the module's doc.
    pub(super) async fn run<F>(
        &self,
        key: ClaimKey<'_>,
        lease: Duration,
        retention: Duration,
        call: F,
    ) -> HandlerResult
    where
        F: Future<Output = HandlerResult> + Send,
    {
        let id = format!("{}:{}:{}", key.queue, key.handler, key.key);
        let names = [format!("{PREFIX}{id}"), format!("{FORCED_PREFIX}{id}")];
        let token = format!("pending:{}", uuid::Uuid::new_v4().simple());
        if let Some(answer) = self.claim(&names, &token, key.force, lease).await? {
            return Ok(skipped(&key, Some(answer.as_str())));
        }
        let name = &names[0];
        // The handler is never cancelled for the lease: a lost lease only lets a copy run.
        let result = tokio::select! {
            r = call => r,
            never = self.keep_renewing(name, &token, lease) => match never {},
        };
        match result {
            Ok(outcome) => {
                let record = self.record(&names, &outcome, key.force, retention);
                // Renewed meanwhile: a retry of the record must not let a copy in.
                tokio::select! {
                    r = record => r?,
                    never = self.keep_renewing(name, &token, lease) => match never {},
                }
                Ok(outcome)
            }
            Err(e) => {
                // Best effort: a claim left behind runs out with its lease.
                if let Ok(mut conn) = self.conn().await {
                    let released = redis::Script::new(RELEASE)
                        .key(name)
                        .arg(&token)
                        .invoke_async::<i64>(&mut conn)
                        .await;
                    if let Err(re) = released {
                        debug!(error = %re, "inbox: claim not released; it runs out with its lease");
                    }
                }
                Err(e)
            }
        }
    }

    /// Replaces the claim with the record (and the force token's marker), trying three times:
    /// failing, the effect would run again once the claim runs out.
    async fn record(
        &self,
        names: &[String; 2],
        outcome: &crate::handler::Outcome,
        force: Option<&str>,
        retention: Duration,
    ) -> StoreResult<()> {
        let done = format!("done:{}", record(outcome));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&names[0])
            .arg(done)
            .arg("PX")
            .arg(millis(retention))
            .ignore();
        if let Some(t) = force {
            pipe.cmd("SET")
                .arg(&names[1])
                .arg(t)
                .arg("PX")
                .arg(millis(retention))
                .ignore();
        }
        let mut last = None;
        for pause in [0, 100, 400] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match self.conn().await {
                Ok(mut conn) => match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(store_failure("record (the effect happened)", e)),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| store_failure("record", "no attempt")))
    }

    /// Takes the key for this call: `None` when claimed, `Some(answer)` when it was recorded
    /// already (and this is not a new forced replay). Waits while another consumer holds it
    /// (its lease bounds the wait when it died).
    async fn claim(
        &self,
        names: &[String; 2],
        token: &str,
        force: Option<&str>,
        lease: Duration,
    ) -> StoreResult<Option<String>> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let script = redis::Script::new(CLAIM);
        loop {
            let mut conn = self.conn().await?;
            let (state, value): (i64, String) = script
                .key(&names[0])
                .key(&names[1])
                .arg(token)
                .arg(millis(lease))
                .arg(force.unwrap_or(""))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_failure("claim", e))?;
            match state {
                1 => return Ok(None),
                2 => return Ok(Some(value.strip_prefix("done:").unwrap_or("").to_owned())),
                _ => {}
            }
            if started.elapsed() > MAX_CLAIM_WAIT {
                return Err(store_failure(
                    "claim",
                    "another consumer has held this key for too long",
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Renews the lease every third of it, for as long as the handler runs. A renewal that
    /// fails is logged: the claim may then run out, and a waiting copy run meanwhile.
    async fn keep_renewing(
        &self,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(lease / 3).await;
            let renewed = match self.conn().await {
                Ok(mut conn) => redis::Script::new(RENEW)
                    .key(name)
                    .arg(token)
                    .arg(millis(lease))
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match renewed {
                Ok(1) => {}
                Ok(_) => warn!(
                    help = "tchu::troubleshooting#inbox-lease",
                    key = name,
                    "inbox: the claim's lease ran out while the handler ran"
                ),
                Err(e) => {
                    warn!(help = "tchu::troubleshooting#inbox-lease", key = name, error = %e, "inbox: could not renew the claim")
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
