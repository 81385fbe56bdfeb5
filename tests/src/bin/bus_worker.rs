//! A small process built on `modelperf-bus`, for crash tests that `kill -9` it.
//!
//! `bus-worker echo`: republishes each `PERF_RAW` message to `perf.events.custom.0` (id
//! `echo:<raw msg id>`), under the lease `aggregator.p0` when `--lease` is given; the payload
//! becomes `<instance>|<original payload>`.
//! `bus-worker sum`: a checkpointed owner of `aggregator-p0` summing decimal payloads; the
//! checkpoint `test.p0` holds the sum and the number of messages applied.

use std::time::Duration;

use modelperf_bus::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Config {
    nats: NatsConfig,
    bus: BusConfig,
}

struct Echo {
    instance: String,
}

impl Handler for Echo {
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let id = msg.header("Nats-Msg-Id").map_or_else(|| msg.seq.to_string(), str::to_owned);
        let mut payload = format!("{}|", self.instance).into_bytes();
        payload.extend_from_slice(msg.payload);
        // Slow enough that a kill lands mid-batch.
        std::thread::sleep(Duration::from_micros(200));
        Ok(vec![Outgoing::new("perf.events.custom.0", format!("echo:{id}"), payload)])
    }
}

#[derive(Default)]
struct Summer {
    sum: u64,
    count: u64,
}

impl PartitionOwner for Summer {
    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let n: u64 = std::str::from_utf8(msg.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        self.sum += n;
        self.count += 1;
        std::thread::sleep(Duration::from_micros(200));
        Ok(Vec::new())
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        let mut state = self.sum.to_be_bytes().to_vec();
        state.extend_from_slice(&self.count.to_be_bytes());
        Checkpoint { applied_seq, replay_from: None, state }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("echo");
    let instance = args.get(2).cloned().unwrap_or_else(|| format!("w{}", std::process::id()));
    let lease_needed = args.iter().any(|a| a == "--lease");
    let cfg: Config = config::load(None)?;
    let client = connect(&cfg.nats, &instance).await?;
    let js = jetstream(client.clone(), Duration::from_secs(10), 4096);
    let topology = Topology::contract(&cfg.bus, 1);
    topology.ensure(&js).await?;
    let stop = CancellationToken::new();
    let term = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        term.cancel();
    });
    let leases = Leases::open(&js, cfg.bus.lease_ttl, &instance).await?;
    let lease = if lease_needed || mode == "sum" {
        match leases.acquire("aggregator.p0", &stop).await? {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    } else {
        None
    };
    let run_stop = match &lease {
        Some(l) => {
            let child = stop.child_token();
            let lost = l.lost();
            let c = child.clone();
            tokio::spawn(async move {
                lost.cancelled().await;
                c.cancel();
            });
            child
        }
        None => stop.clone(),
    };
    match mode {
        "echo" => {
            let consumer = js
                .get_stream(streams::RAW)
                .await?
                .get_consumer("collector")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut rc = RunnerConfig::new("bus-worker", &cfg.bus);
            rc.in_flight_batches = 2;
            run(js.clone(), consumer, std::sync::Arc::new(Echo { instance }), &rc, run_stop).await?;
        }
        "sum" => {
            let (mut store, cp) = CheckpointStore::open(&js, "test.p0").await?;
            let mut owner = Summer::default();
            let mut resume = 0;
            if let Some(cp) = cp {
                owner.sum = u64::from_be_bytes(cp.state[..8].try_into()?);
                owner.count = u64::from_be_bytes(cp.state[8..16].try_into()?);
                resume = cp.applied_seq;
            }
            let consumer = open_at(&js, &topology, "aggregator-p0", resume + 1).await?;
            let oc = OwnerConfig {
                stage: "bus-worker".into(),
                fetch_batch: 100,
                checkpoint_interval: cfg.bus.checkpoint_interval,
                max_in_flight: cfg.bus.max_ack_pending as usize,
            };
            let lost = lease.as_ref().map(Lease::lost).unwrap_or_default();
            run_owner(&js, consumer, &mut store, &mut owner, resume, &oc, run_stop, lost).await?;
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    if let Some(l) = lease {
        l.release().await;
    }
    client.flush().await?;
    Ok(())
}
