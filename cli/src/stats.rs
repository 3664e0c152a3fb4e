//! Percentiles, the latency CDF, and the progress bar.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Round-trip figures in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1), in µs.
fn at(sorted: &[u64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1] as f64 / 1000.0
}

/// Sorts `ns` and summarises it (None when empty).
pub fn summarize(ns: &mut [u64]) -> Option<Summary> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let mean = ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64 / 1000.0;
    Some(Summary {
        min: ns[0] as f64 / 1000.0,
        p50: at(ns, 0.50),
        p90: at(ns, 0.90),
        p99: at(ns, 0.99),
        p99_9: at(ns, 0.999),
        max: ns[ns.len() - 1] as f64 / 1000.0,
        mean,
    })
}

/// The CDF of sorted samples as `[µs, fraction]` points: every percent,
/// then the tail (99.5, 99.9, 99.99 %) and the maximum.
pub fn cdf(sorted: &[u64]) -> Vec<[f64; 2]> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (1..100).map(|p| p as f64 / 100.0).collect();
    qs.extend([0.995, 0.999, 0.9999, 1.0]);
    let mut out = vec![[sorted[0] as f64 / 1000.0, 0.0]];
    out.extend(qs.into_iter().map(|q| [at(sorted, q), q]));
    out
}

/// Prints the summary as a small table.
pub fn print_table(s: &Summary) {
    println!("  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (µs)", "min", "p50", "p90", "p99", "p99.9", "max");
    println!("  {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", s.min, s.p50, s.p90, s.p99, s.p99_9, s.max);
}

/// How a run ends.
#[derive(Clone, Copy)]
pub enum Plan {
    Count(u64),
    Time(Duration),
}

/// A progress bar that shows up only on a terminal and only once the run
/// has lasted a second (short runs stay quiet).
pub struct Progress {
    plan: Plan,
    start: Instant,
    next_check: Instant,
    allowed: bool,
    bar: Option<ProgressBar>,
    what: &'static str,
}

impl Progress {
    pub fn new(plan: Plan, what: &'static str, json: bool) -> Progress {
        let now = Instant::now();
        Progress {
            plan,
            start: now,
            next_check: now + Duration::from_secs(1),
            allowed: !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            bar: None,
            what,
        }
    }

    /// Called often with the units done so far and the time now; cheap
    /// except every 100 ms.
    pub fn tick(&mut self, done: u64, now: Instant) {
        if !self.allowed || now < self.next_check {
            return;
        }
        self.next_check = now + Duration::from_millis(100);
        let bar = self.bar.get_or_insert_with(|| {
            let (len, template) = match self.plan {
                Plan::Count(n) => (n, "{bar:40} {pos}/{len} {msg} ({eta} left)"),
                Plan::Time(t) => (t.as_millis() as u64, "{bar:40} {msg}"),
            };
            let b = ProgressBar::new(len);
            b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            b
        });
        match self.plan {
            Plan::Count(_) => {
                bar.set_position(done);
                bar.set_message(self.what);
            }
            Plan::Time(t) => {
                let el = now.duration_since(self.start);
                bar.set_position(el.as_millis() as u64);
                bar.set_message(format!("{done} {} ({:.0} of {:.0} s)", self.what, el.as_secs_f64(), t.as_secs_f64()));
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Seconds since the Unix epoch (for the JSON records).
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).rev().map(|x| x * 1000).collect();
        let s = summarize(&mut v).unwrap();
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.p99_9, s.max), (1.0, 500.0, 900.0, 990.0, 999.0, 1000.0));
        assert!((s.mean - 500.5).abs() < 1e-9);
        let c = cdf(&v);
        assert_eq!(c[0], [1.0, 0.0]);
        assert_eq!(*c.last().unwrap(), [1000.0, 1.0]);
        assert!(c.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1]));
        assert!(summarize(&mut []).is_none());
    }
}
