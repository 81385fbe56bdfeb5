//! What the benchmark binaries share: finding the service binaries next to them, child
//! processes killed on every way out, resident memory from `/proc`, medians, and a
//! deterministic mixer for synthetic workloads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// The release binary `name` next to the running benchmark; an error naming the build command
/// when it is missing.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release --workspace --bins (or make bench)",
        path.display()
    );
    Ok(path)
}

/// A child process, killed on every way out.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the resident memory of `pid` every 200 ms until `stop`; returns the peak (KiB).
pub fn watch_rss(pid: u32, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.is_cancelled() {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    })
}

/// The median (the upper one of an even count); `NaN` for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A deterministic pseudo-random 64-bit value of `x` (SplitMix64).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sum of every sample of the Prometheus metric `name` (any labels) in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_every_label_set_of_one_name_only() {
        let text = "# TYPE a_total counter\na_total{d=\"x\"} 3\na_total{d=\"y\"} 4.5\na_total_other 100\na_total 1\n";
        assert_eq!(metric_sum(text, "a_total"), 8.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
