//! What the suite measures and keeps: table rows (each with its command,
//! baseline, ratio and time), latency CDFs and throughput curves.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The sections of docs/BENCHMARKS.md, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Engine,
    Catnap,
    Catnip,
    Rdma,
    HostThroughput,
    RdmaThroughput,
}

/// One measured figure next to its baseline.
#[derive(Clone, Debug)]
pub struct Row {
    pub section: Section,
    /// What was measured ("catnap TCP, 64 B").
    pub path: String,
    /// Which figure ("RTT p50").
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    /// The baseline's name and value on the same figure.
    pub baseline: Option<(String, f64)>,
    pub lower_is_better: bool,
    /// The command that produced the value (and, after " / ", the baseline's).
    pub command: String,
    /// When it ran (UTC).
    pub when: String,
}

impl Row {
    /// value ÷ baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().filter(|b| b.1 > 0.0).map(|b| self.value / b.1)
    }
}

/// Plot groups: one latency CDF plot, or one throughput plot, per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Loopback,
    Memif,
    SoftRoce,
}

impl Group {
    pub fn file_tag(self) -> &'static str {
        match self {
            Group::Loopback => "loopback",
            Group::Memif => "memif",
            Group::SoftRoce => "softroce",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Group::Loopback => "host loopback (Linux sockets)",
            Group::Memif => "DPDK memif between two processes (kernel UDP on loopback for reference)",
            Group::SoftRoce => "soft-RoCE rxe1 -> rxe0 over a veth pair, in a qemu/TCG VM",
        }
    }
}

/// A latency distribution: `[µs, fraction]` points, ascending.
#[derive(Clone, Debug)]
pub struct Cdf {
    pub group: Group,
    pub label: String,
    pub points: Vec<[f64; 2]>,
}

/// Throughput against message size: `(bytes, Gbit/s)`.
#[derive(Clone, Debug)]
pub struct Curve {
    pub group: Group,
    pub label: String,
    pub points: Vec<(usize, f64)>,
}

#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub cdfs: Vec<Cdf>,
    pub curves: Vec<Curve>,
    /// Runs that failed or were skipped, and why.
    pub missing: Vec<String>,
    /// Things worth knowing about this run (retries, ...).
    pub notes: Vec<String>,
    /// Facts about the run (versions, boot time, ...), for the prose.
    pub facts: Vec<(String, String)>,
    /// Whole Markdown sections other tools rendered (scripts/bench-rdma),
    /// placed after the tables as they are.
    pub sections: Vec<String>,
}

impl Results {
    pub fn fact(&mut self, k: &str, v: impl Into<String>) {
        self.facts.push((k.to_string(), v.into()));
    }

    pub fn get_fact(&self, k: &str) -> Option<&str> {
        self.facts.iter().find(|f| f.0 == k).map(|f| f.1.as_str())
    }

    pub fn miss(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("bench: not measured: {w}");
        self.missing.push(w);
    }

    pub fn curve(&mut self, group: Group, label: &str) -> &mut Curve {
        if let Some(i) = self.curves.iter().position(|c| c.group == group && c.label == label) {
            return &mut self.curves[i];
        }
        self.curves.push(Curve { group, label: label.to_string(), points: Vec::new() });
        self.curves.last_mut().unwrap()
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
}

/// A CDF from raw samples (µs).
pub fn cdf_of(mut us: Vec<f64>) -> Vec<[f64; 2]> {
    us.sort_by(f64::total_cmp);
    if us.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (1..100).map(|p| p as f64 / 100.0).collect();
    qs.extend([0.995, 0.999, 0.9999, 1.0]);
    let mut out = vec![[us[0], 0.0]];
    out.extend(qs.into_iter().map(|q| [percentile(&us, q), q]));
    out
}

/// The value of a CDF at fraction `q` (its points are percentiles).
pub fn cdf_at(points: &[[f64; 2]], q: f64) -> Option<f64> {
    points.iter().find(|p| p[1] >= q - 1e-12).map(|p| p[0])
}

/// UTC "YYYY-MM-DD HH:MM" of now (civil date from the Unix day number).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Days since 1970-01-01 to a proleptic Gregorian date (eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

/// Runs a command to the end, bounded by `limit` (killed by pid past it).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() })
}

/// Why a Rust program failed: its panic message if it panicked, else the
/// last line of its stderr.
pub fn why_failed(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => format!("{} {}", lines[i].trim(), lines.get(i + 1).map_or("", |l| l.trim())),
        None => last_line(stderr),
    }
}

/// The last non-empty line of some output (for "why it failed").
pub fn last_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}
