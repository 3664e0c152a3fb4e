//! The host half: the engine benchmark, catnip-bench, and `demi ping` /
//! `demi stream` over catnap and catnip next to the kernel baselines.

use crate::kernel;
use crate::model::{cdf_at, cdf_of, run_bounded, utc_now, why_failed, Group, Results, Row, Section};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What every run needs to know.
pub struct Ctx {
    /// The demi binary.
    pub demi: PathBuf,
    /// This program (for the kernel roles).
    pub me: PathBuf,
    /// Scratch folder (memif sockets, logs), inside the repository so the VM sees it.
    pub work: PathBuf,
    pub quick: bool,
    pub root: bool,
}

impl Ctx {
    pub fn ping_count(&self) -> usize {
        if self.quick {
            2000
        } else {
            20_000
        }
    }

    pub fn stream_secs(&self) -> f64 {
        if self.quick {
            0.3
        } else {
            1.5
        }
    }
}

/// Message sizes of the throughput curves: 64 B to 1 MiB, by fours.
pub const SIZES: [usize; 8] = [64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576];
/// catnip's sizes: its datagrams stop at 1472 B (MTU 1500).
pub const CATNIP_SIZES: [usize; 4] = [64, 256, 1024, 1472];

#[allow(clippy::too_many_arguments)]
pub fn row(
    section: Section,
    path: &str,
    figure: &str,
    value: f64,
    unit: &'static str,
    baseline: Option<(&str, f64)>,
    lower_is_better: bool,
    command: String,
) -> Row {
    Row {
        section,
        path: path.to_string(),
        figure: figure.to_string(),
        value,
        unit,
        baseline: baseline.map(|(n, v)| (n.to_string(), v)),
        lower_is_better,
        command,
        when: utc_now(),
    }
}

/// A server child (demi echo or a kernel role), killed by pid and reaped on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits (bounded) for a first line naming its address
/// ("demi echo: listening on ADDR ..." or "ready ADDR").
pub fn start_server(mut cmd: Command) -> Result<Server, String> {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let addr = line
        .strip_prefix("demi echo: listening on ")
        .or_else(|| line.strip_prefix("ready "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => Ok(Server { child, addr }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("the server did not start (first line {:?})", line.trim()))
        }
    }
}

/// Runs `demi ARGS --json` and parses its record.
pub fn demi_json(ctx: &Ctx, args: &[String], limit: Duration) -> Result<Value, String> {
    let o = run_bounded(Command::new(&ctx.demi).args(args), limit).map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("{}: {}", o.status, why_failed(&o.stderr)));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("not JSON ({e})"))
}

pub fn shown(args: &[String]) -> String {
    format!("demi {}", args.join(" "))
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The engine bench (`cargo bench --bench engine`) and a system call as
/// the baseline of its per-operation cost.
pub fn engine(ctx: &Ctx, r: &mut Results) {
    let rounds = if ctx.quick { "2000" } else { "20000" };
    let cmd = format!("DEMI_BENCH_ROUNDS={rounds} cargo bench --bench engine");
    eprintln!("bench: {cmd}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = run_bounded(
        Command::new(cargo).args(["bench", "--bench", "engine"]).env("DEMI_BENCH_ROUNDS", rounds),
        Duration::from_secs(600),
    );
    let out = match o {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return r.miss(format!("{cmd}: {}: {}", o.status, why_failed(&o.stderr))),
        Err(e) => return r.miss(format!("{cmd}: {e}")),
    };
    let cells = |label: &str| -> Option<Vec<f64>> {
        let line = out.lines().find(|l| l.starts_with(&format!("| {label} |")))?;
        Some(line.split('|').skip(2).filter_map(|c| c.trim().parse().ok()).collect())
    };
    let syscall = syscall_ns();
    let scmd = "bench-suite: 1,000,000 x getppid(2), best of 5";
    for (label, name) in [("push, 64 B, loopback device", "push"), ("pop, 64 B, loopback device", "pop")] {
        match cells(label).and_then(|c| c.first().copied()) {
            Some(ns) => r.rows.push(row(
                Section::Engine,
                &format!("{name}: issue + complete + wait, 64 B, loopback device"),
                "cost per operation",
                ns,
                "ns",
                Some(("one system call (getppid)", syscall)),
                true,
                format!("{cmd} / {scmd}"),
            )),
            None => r.miss(format!("{cmd}: no {label:?} line in its output")),
        }
    }
    r.fact("syscall_ns", format!("{syscall:.0}"));
    let (Some(b), Some(c)) = (cells("plain blocking sockets (baseline)"), cells("catnap")) else {
        return r.miss(format!("{cmd}: no catnap/blocking lines in its output"));
    };
    for (i, fig) in ["RTT p50", "RTT p99", "RTT mean"].iter().enumerate() {
        if let (Some(&v), Some(&bv)) = (c.get(i), b.get(i)) {
            r.rows.push(row(
                Section::Catnap,
                "catnap TCP 64 B, echo thread + client thread (engine bench)",
                fig,
                v,
                "µs",
                Some(("plain blocking sockets, same threads", bv)),
                true,
                cmd.clone(),
            ));
        }
    }
}

/// The cost of one cheap system call, best of five rounds.
fn syscall_ns() -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..1_000_000 {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        best = best.min(t0.elapsed().as_nanos() as f64 / 1e6);
    }
    best
}

/// catnip-bench: catnip over memif and af_packet vs kernel UDP over veth.
pub fn catnip_bench(ctx: &Ctx, r: &mut Results) {
    if !ctx.root {
        return r.miss("catnip-bench: needs root (network namespaces, DPDK)");
    }
    let (rounds, secs) = if ctx.quick { ("2000", "1") } else { ("20000", "3") };
    let cmd = format!("cargo run --release --example catnip-bench -- --rounds {rounds} --seconds {secs}");
    eprintln!("bench: {cmd}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = ["run", "--release", "--example", "catnip-bench", "--", "--rounds", rounds, "--seconds", secs];
    // A run now and then fails to set up (e.g. ARP towards a memif peer
    // whose link came up late): one retry, said in the file.
    let mut out = None;
    for attempt in 1..=2 {
        let why = match run_bounded(Command::new(&cargo).args(args), Duration::from_secs(600)) {
            Ok(o) if o.status.success() => {
                out = Some(String::from_utf8_lossy(&o.stdout).into_owned());
                break;
            }
            Ok(o) => format!("{}: {}", o.status, why_failed(&o.stderr)),
            Err(e) => e.to_string(),
        };
        if attempt == 1 {
            r.notes.push(format!("{cmd}: the first attempt failed ({why}); retried once"));
        } else {
            return r.miss(format!("{cmd}: {why}"));
        }
    }
    let Some(out) = out else { return };
    // | path | RTT p50 | RTT p99 | datagrams/s | ... |
    let mut table = Vec::new();
    for l in out.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| path")) {
        let c: Vec<&str> = l.split('|').map(str::trim).collect();
        if let (Some(name), Some(p50), Some(p99), Some(pps)) = (c.get(1), c.get(2), c.get(3), c.get(4)) {
            if let (Ok(a), Ok(b), Ok(p)) = (p50.parse::<f64>(), p99.parse::<f64>(), pps.parse::<f64>()) {
                table.push((name.to_string(), a, b, p));
            }
        }
    }
    let Some(kernel) = table.iter().find(|t| t.0.starts_with("kernel")).cloned() else {
        return r.miss(format!("{cmd}: no kernel row in its table"));
    };
    r.fact("catnip_bench_rounds", rounds);
    r.fact("catnip_bench_seconds", secs);
    for (name, p50, p99, pps) in &table {
        let base = |v: f64| (name != &kernel.0).then_some((kernel.0.as_str(), v));
        let path = format!("{name}, 64 B (catnip-bench)");
        r.rows.push(row(Section::Catnip, &path, "RTT p50", *p50, "µs", base(kernel.1), true, cmd.clone()));
        r.rows.push(row(Section::Catnip, &path, "RTT p99", *p99, "µs", base(kernel.2), true, cmd.clone()));
        r.rows.push(row(Section::Catnip, &path, "throughput", *pps, "datagrams/s", base(kernel.3), false, cmd.clone()));
    }
}

fn kernel_server(ctx: &Ctx, kind: &str) -> Result<Server, String> {
    let mut c = Command::new(&ctx.me);
    c.args(["role", kind]);
    start_server(c)
}

/// Latency rows of `ours` (a CDF) against a baseline CDF.
fn latency_rows(
    r: &mut Results,
    section: Section,
    path: &str,
    ours: &[[f64; 2]],
    base: (&str, &[[f64; 2]]),
    cmd: &str,
) {
    for (fig, q) in [("RTT p50", 0.5), ("RTT p99", 0.99), ("RTT p99.9", 0.999)] {
        if let (Some(v), Some(b)) = (cdf_at(ours, q), cdf_at(base.1, q)) {
            r.rows.push(row(section, path, fig, v, "µs", Some((base.0, b)), true, cmd.to_string()));
        }
    }
}

fn cdf_from_json(v: &Value) -> Vec<[f64; 2]> {
    v["cdf"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| Some([p[0].as_f64()?, p[1].as_f64()?])).collect())
        .unwrap_or_default()
}

/// catnap through `demi ping`/`demi stream` (two processes) against the
/// kernel baselines (two processes), and catnip over memif.
pub fn demi_paths(ctx: &Ctx, r: &mut Results) {
    let n = ctx.ping_count().to_string();
    let secs = format!("{}", ctx.stream_secs());
    let mut kernel_udp_cdf = None;
    for proto in ["tcp", "udp"] {
        let label = format!("catnap {}", proto.to_uppercase());
        eprintln!("bench: {label} ping and stream, and the kernel baseline");
        let kernel_label = format!("kernel {} (blocking std::net)", proto.to_uppercase());
        let kcmd = format!("bench-suite role kernel-{proto} + its client: {n} x 64 B round trips");
        let ks = kernel_server(ctx, &format!("kernel-{proto}"));
        let kus = ks.as_ref().map_err(|e| e.clone()).and_then(|s| {
            let f = if proto == "tcp" { kernel::tcp_ping } else { kernel::udp_ping };
            f(s.addr, 64, ctx.ping_count()).map_err(|e| e.to_string())
        });
        let kcdf = match kus {
            Ok(us) => cdf_of(us),
            Err(e) => {
                r.miss(format!("{kernel_label} ping: {e}"));
                Vec::new()
            }
        };
        let echo = strings(&["echo", "--quiet", "--proto", proto, "--bind", "127.0.0.1:0"]);
        let server = match start_server({
            let mut c = Command::new(&ctx.demi);
            c.args(&echo);
            c
        }) {
            Ok(s) => s,
            Err(e) => {
                r.miss(format!("demi echo over catnap {proto}: {e}"));
                continue;
            }
        };
        let to = server.addr.to_string();
        let args = strings(&[
            "ping", "--proto", proto, "--to", &to, "--size", "64", "--count", &n, "--warmup", "1000", "--json",
        ]);
        let cmd = format!("{} (server: {})", shown(&args), shown(&echo));
        match demi_json(ctx, &args, Duration::from_secs(300)) {
            Ok(v) => {
                let cdf = cdf_from_json(&v);
                if !kcdf.is_empty() {
                    let both = format!("{cmd} / {kcmd}");
                    latency_rows(
                        r,
                        Section::Catnap,
                        &format!("{label} 64 B, demi echo + demi ping"),
                        &cdf,
                        (&kernel_label, &kcdf),
                        &both,
                    );
                    r.cdfs.push(crate::model::Cdf {
                        group: Group::Loopback,
                        label: kernel_label.clone(),
                        points: kcdf.clone(),
                    });
                }
                r.cdfs.push(crate::model::Cdf {
                    group: Group::Loopback,
                    label: format!("{label} (demi)"),
                    points: cdf,
                });
            }
            Err(e) => r.miss(format!("{cmd}: {e}")),
        }
        if proto == "udp" {
            kernel_udp_cdf = Some(kcdf.clone());
        }
        // Throughput against size (TCP: 64 B..1 MiB; UDP: to 64 KiB).
        let sizes: Vec<usize> = if proto == "tcp" {
            SIZES.to_vec()
        } else {
            SIZES.iter().copied().filter(|&s| s <= 16384).chain([65507]).collect()
        };
        for size in sizes {
            let s = size.to_string();
            let args = strings(&["stream", "--proto", proto, "--to", &to, "--size", &s, "--time", &secs, "--json"]);
            let cmd = format!("{} (server: {})", shown(&args), shown(&echo));
            let ours = demi_json(ctx, &args, Duration::from_secs(120)).map(|v| v["gbit_per_s"].as_f64().unwrap_or(0.0));
            let base = ks.as_ref().map_err(|e| e.clone()).and_then(|k| {
                let f = if proto == "tcp" { kernel::tcp_stream } else { kernel::udp_stream };
                f(k.addr, size, ctx.stream_secs()).map_err(|e| e.to_string())
            });
            match (ours, base) {
                (Ok(g), Ok(b)) => {
                    r.curve(Group::Loopback, &format!("{label} (demi stream)")).points.push((size, g));
                    r.curve(Group::Loopback, &kernel_label).points.push((size, b));
                    r.rows.push(row(
                        Section::HostThroughput,
                        &format!("{label}, {}", size_label(size)),
                        "one-way throughput",
                        g,
                        "Gbit/s",
                        Some((&kernel_label, b)),
                        false,
                        format!("{cmd} / bench-suite role kernel-{proto} + its sender, {secs} s"),
                    ));
                }
                (Err(e), _) => r.miss(format!("{cmd}: {e}")),
                (_, Err(e)) => r.miss(format!("{kernel_label} stream of {size} B: {e}")),
            }
        }
        drop(server);
    }
    catnip_memif(ctx, r, kernel_udp_cdf.unwrap_or_default());
}

pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn catnip_memif(ctx: &Ctx, r: &mut Results, kernel_udp: Vec<[f64; 2]>) {
    if !ctx.root {
        return r.miss("catnip over memif: needs root (DPDK's EAL)");
    }
    eprintln!("bench: catnip over memif, ping and stream");
    let sock = ctx.work.join("memif.sock").display().to_string();
    let common = |role_args: &[&str]| -> Vec<String> {
        let mut v = strings(&["--libos", "catnip", "--proto", "udp", "--memif", &sock]);
        v.extend(strings(role_args));
        v
    };
    let mut echo = strings(&["echo", "--quiet"]);
    echo.extend(common(&["--bind", "10.77.9.1:7000"]));
    let _ = std::fs::remove_file(&sock);
    let server = match start_server({
        let mut c = Command::new(&ctx.demi);
        c.args(&echo);
        c
    }) {
        Ok(s) => s,
        Err(e) => return r.miss(format!("{}: {e}", shown(&echo))),
    };
    let client = common(&["--bind", "10.77.9.2", "--to", "10.77.9.1:7000", "--timeout", "10", "--json"]);
    let n = ctx.ping_count().to_string();
    let mut args = strings(&["ping", "--size", "64", "--count", &n, "--warmup", "1000"]);
    args.extend(client.clone());
    let cmd = format!("{} (server: {})", shown(&args), shown(&echo));
    match demi_json(ctx, &args, Duration::from_secs(300)) {
        Ok(v) => {
            let cdf = cdf_from_json(&v);
            if !kernel_udp.is_empty() {
                let both = format!("{cmd} / bench-suite role kernel-udp + its client: {n} x 64 B round trips");
                latency_rows(
                    r,
                    Section::Catnip,
                    "catnip UDP 64 B over memif, demi echo + demi ping",
                    &cdf,
                    ("kernel UDP on loopback (blocking std::net)", &kernel_udp),
                    &both,
                );
                r.cdfs.push(crate::model::Cdf {
                    group: Group::Memif,
                    label: "kernel UDP on loopback (blocking std::net)".into(),
                    points: kernel_udp,
                });
            }
            r.cdfs.push(crate::model::Cdf {
                group: Group::Memif,
                label: "catnip UDP over memif (demi)".into(),
                points: cdf,
            });
        }
        Err(e) => r.miss(format!("{cmd}: {e}")),
    }
    let kernel = kernel_server(ctx, "kernel-udp");
    for size in CATNIP_SIZES {
        let s = size.to_string();
        let mut args = strings(&["stream", "--size", &s, "--time", &format!("{}", ctx.stream_secs())]);
        args.extend(client.clone());
        let cmd = format!("{} (server: {})", shown(&args), shown(&echo));
        let ours = demi_json(ctx, &args, Duration::from_secs(120)).map(|v| v["gbit_per_s"].as_f64().unwrap_or(0.0));
        let base = kernel
            .as_ref()
            .map_err(|e| e.clone())
            .and_then(|k| kernel::udp_stream(k.addr, size, ctx.stream_secs()).map_err(|e| e.to_string()));
        match (ours, base) {
            (Ok(g), Ok(b)) => {
                r.curve(Group::Memif, "catnip UDP over memif (demi stream)").points.push((size, g));
                r.curve(Group::Memif, "kernel UDP on loopback (blocking std::net)").points.push((size, b));
                r.rows.push(row(
                    Section::HostThroughput,
                    &format!("catnip UDP over memif, {}", size_label(size)),
                    "one-way throughput",
                    g,
                    "Gbit/s",
                    Some(("kernel UDP on loopback (blocking std::net)", b)),
                    false,
                    format!("{cmd} / bench-suite role kernel-udp + its sender"),
                ));
            }
            (Err(e), _) => r.miss(format!("{cmd}: {e}")),
            (_, Err(e)) => r.miss(format!("kernel UDP stream of {size} B: {e}")),
        }
    }
    drop(server);
    let _ = std::fs::remove_file(&sock);
}
