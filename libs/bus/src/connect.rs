//! Connecting to NATS with every authentication option of the contract.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::config::NatsConfig;
use crate::error::BusError;

/// Connects to NATS as `name` (shown by the server's monitoring), retrying the first connection
/// for `initial_timeout` so that a service may start before its server.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Client, BusError> {
    let mut opts = match &cfg.creds_file {
        Some(path) => ConnectOptions::new()
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Config(format!("MODELPERF_NATS__CREDS_FILE {}: {e}", path.display())))?,
        None => ConnectOptions::new(),
    };
    match (&cfg.user, &cfg.password) {
        (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
        (Some(_), None) | (None, Some(_)) => {
            return Err(BusError::Config(
                "MODELPERF_NATS__USER and MODELPERF_NATS__PASSWORD must be set together".into(),
            ));
        }
        (None, None) => {}
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| BusError::Config(format!("MODELPERF_NATS__NKEY_SEED_FILE {}: {e}", path.display())))?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let opts = opts.name(name).connection_timeout(Duration::from_secs(5)).retry_on_initial_connect().event_callback(
        |event| async move {
            tracing::info!(%event, "nats connection event");
        },
    );
    let urls: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| BusError::Config(format!("MODELPERF_NATS__URL `{}`: {e}", cfg.url)))?;
    let client = opts.connect(urls).await.map_err(|e| BusError::Connect(e.to_string()))?;
    Ok(client)
}

/// A JetStream context whose publish acks time out after `ack_timeout` and whose in-flight
/// publishes are bounded (the client applies backpressure beyond `max_inflight`).
pub fn jetstream(client: Client, ack_timeout: Duration, max_inflight: usize) -> async_nats::jetstream::Context {
    async_nats::jetstream::context::ContextBuilder::new()
        .timeout(ack_timeout)
        .ack_timeout(ack_timeout)
        .max_ack_inflight(max_inflight)
        .build(client)
}
