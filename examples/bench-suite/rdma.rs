//! The soft-RoCE half: one rxe-run boot runs rdma-in-vm.sh (catmint through
//! demi, perftest, rstream, then scripts/bench-rdma's interleaved rounds);
//! this side reads what it left in the shared folder.

use crate::host::{row, size_label, Ctx, SIZES};
use crate::model::{cdf_at, cdf_of, last_line, run_bounded, Cdf, Group, Results, Section};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// catmint's UD datagrams stop at the path MTU less 8: 1016 B on the VM's
/// 1500-byte veths.
const UD_SIZES: [usize; 3] = [64, 256, 1016];

pub fn run(ctx: &Ctx, r: &mut Results) {
    let out = ctx.work.join("rdma");
    let _ = std::fs::remove_dir_all(&out);
    if let Err(e) = std::fs::create_dir_all(&out) {
        return r.miss(format!("RDMA part: cannot make {}: {e}", out.display()));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench-suite/rdma-in-vm.sh");
    let sizes: Vec<String> = SIZES.iter().map(|s| s.to_string()).collect();
    let ud: Vec<String> = UD_SIZES.iter().map(|s| s.to_string()).collect();
    let (count, iters, secs) = if ctx.quick { ("500", "500", "1") } else { ("5000", "5000", "2") };
    eprintln!("bench: the RDMA part in rxe-setup/rxe-run (one VM boot, several minutes under TCG)");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rxe_run = repo.join("rxe-setup/rxe-run");
    let mut cmd = Command::new(rxe_run);
    // The VM sees the repository; a target folder elsewhere (CARGO_TARGET_DIR)
    // must be shared too, or the binaries are missing in there.
    let bins = ctx.demi.parent().expect("target folder");
    if !bins.starts_with(repo) {
        cmd.arg("--share").arg(bins);
    }
    cmd.args(["--timeout", "2400", "--"])
        .arg(&script)
        .env("BENCH_OUT", &out)
        .env("BENCH_DEMI", &ctx.demi)
        .env("BENCH_SIZES", sizes.join(" "))
        .env("BENCH_UD_SIZES", ud.join(" "))
        .env("BENCH_PING_COUNT", count)
        .env("BENCH_LAT_ITERS", iters)
        .env("BENCH_STREAM_SECS", secs);
    // scripts/bench-rdma's rounds run last in the same boot (the section
    // "catmint (RDMA over soft-RoCE)"); --quick shortens them too, unless
    // the caller chose.
    let rdma_bench = bins.join("examples/rdma-bench");
    if rdma_bench.is_file() {
        cmd.env("BENCH_RDMA_BIN", &rdma_bench);
        if ctx.quick {
            for (k, v) in [("BENCH_REPEAT", "1"), ("BENCH_LAT_COUNT", "500"), ("BENCH_BW_BYTES", "4194304")] {
                if std::env::var_os(k).is_none() {
                    cmd.env(k, v);
                }
            }
        }
    } else {
        cmd.env("BENCH_RDMA_BIN", "");
        r.miss(format!(
            "the section \"{ROUNDS_SECTION}\": {} is missing (cargo build --release --example rdma-bench)",
            rdma_bench.display()
        ));
    }
    let when = crate::model::utc_now();
    let load0 = crate::loadavg();
    let t0 = Instant::now();
    let o = run_bounded(&mut cmd, Duration::from_secs(2500));
    let load1 = crate::loadavg();
    let o = match o {
        Ok(o) => o,
        Err(e) => return r.miss(format!("rxe-setup/rxe-run: {e}")),
    };
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for l in err.lines().filter(|l| l.starts_with("rxe-run: mode") || l.starts_with("rxe-run: VM up")) {
        eprintln!("bench: {l}");
        if let Some(m) = l.strip_prefix("rxe-run: mode: ") {
            r.fact("rxe_mode", m);
        }
        if let Some(m) = l.strip_prefix("rxe-run: VM up in ") {
            r.fact("rxe_boot", m);
        }
    }
    r.fact("rdma_seconds", format!("{:.0}", t0.elapsed().as_secs_f64()));
    r.fact("rdma_ping_count", count);
    r.fact("rdma_lat_iters", iters);
    r.fact("rdma_stream_secs", secs);
    if !o.status.success() {
        r.miss(format!("rxe-setup/rxe-run ... rdma-in-vm.sh: {}: {}", o.status, last_line(&o.stderr)));
    }
    let notes = std::fs::read_to_string(out.join("notes.txt")).unwrap_or_default();
    r.notes.extend(
        notes.lines().filter(|l| !l.trim().is_empty()).map(|l| l.replace(&ctx.demi.display().to_string(), "demi")),
    );
    // Crash evidence the guest kept (see rdma-in-vm.sh): say so loudly.
    let traps = std::fs::read_to_string(out.join("kernel-traps.txt")).unwrap_or_default();
    r.notes.extend(traps.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("guest kernel: {}", l.trim())));
    if let Ok(cores) = std::fs::read_dir(out.join("cores")) {
        for c in cores.flatten() {
            r.notes.push(format!("a process crashed and left {}", c.path().display()));
        }
    }
    parse(ctx, &out, r);
    if rdma_bench.is_file() {
        rounds(ctx, &out, r, &[("BENCH_RDMA_WHEN", &when), ("BENCH_RDMA_LOAD0", &load0), ("BENCH_RDMA_LOAD1", &load1)]);
    }
}

/// The heading scripts/bench-rdma writes (and finds again with --update-docs).
const ROUNDS_SECTION: &str = "catmint (RDMA over soft-RoCE)";

/// scripts/bench-rdma's rounds, run in this boot: its --render makes the
/// section from their raw lines, and the document carries it as it is.
fn rounds(ctx: &Ctx, out: &Path, r: &mut Results, meta: &[(&str, &str)]) {
    let what = format!("the section \"{ROUNDS_SECTION}\"");
    match index(out, &ctx.demi.display().to_string()).get("bench-rdma") {
        None => return r.miss(format!("{what}: scripts/bench-rdma --guest did not run")),
        Some((0, _)) => {}
        Some((st, cmd)) => {
            let e = std::fs::read_to_string(out.join("bench-rdma.err")).unwrap_or_default();
            return r.miss(format!("{what}: {cmd}: status {st}: {}", last_line(e.as_bytes())));
        }
    }
    let raw = out.join("bench-rdma.out");
    // Lines "[Rn ]ERROR ..." are runs of a round that failed (the medians
    // then have fewer rounds); "[Rn ]NOTE ..." are worth a note.
    let text = std::fs::read_to_string(&raw).unwrap_or_default();
    for line in text.lines() {
        let round = |p: &str| p.len() > 1 && p.starts_with('R') && p[1..].bytes().all(|b| b.is_ascii_digit());
        let l = line.split_once(' ').filter(|(p, _)| round(p)).map_or(line, |(_, rest)| rest);
        if let Some(e) = l.strip_prefix("ERROR ") {
            r.miss(format!("{what}: {}", e.trim()));
        } else if let Some(n) = l.strip_prefix("NOTE ") {
            r.notes.push(format!("scripts/bench-rdma rounds: {}", n.trim()));
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-rdma");
    let mut cmd = Command::new(script);
    cmd.arg("--render").arg(&raw).envs(meta.iter().copied());
    match run_bounded(&mut cmd, Duration::from_secs(60)) {
        Ok(o) if o.status.success() => r.sections.push(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => r.miss(format!("{what}: scripts/bench-rdma --render: {}: {}", o.status, last_line(&o.stderr))),
        Err(e) => r.miss(format!("{what}: scripts/bench-rdma --render: {e}")),
    }
}

/// NAME -> (status, command), from index.tsv.
fn index(out: &Path, demi: &str) -> HashMap<String, (i32, String)> {
    let text = std::fs::read_to_string(out.join("index.tsv")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let (name, st, cmd) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), (st.parse().unwrap_or(-1), cmd.replace(demi, "demi"))))
        })
        .collect()
}

fn parse(ctx: &Ctx, out: &Path, r: &mut Results) {
    let idx = index(out, &ctx.demi.display().to_string());
    let read = |name: &str| -> Result<(String, String), String> {
        let (st, cmd) = idx.get(name).cloned().ok_or_else(|| format!("{name}: did not run"))?;
        let text = std::fs::read_to_string(out.join(format!("{name}.out"))).unwrap_or_default();
        if st != 0 {
            let e = std::fs::read_to_string(out.join(format!("{name}.err"))).unwrap_or_default();
            return Err(format!("{cmd}: status {st}: {}", last_line(e.as_bytes())));
        }
        Ok((text, cmd))
    };
    // perftest: per-iteration latencies (-U), each half a round trip.
    let perftest = |name: &str| {
        read(name).and_then(|(t, cmd)| {
            let us: Vec<f64> = t
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(',')?;
                    a.trim().parse::<u64>().ok()?;
                    b.trim().parse::<f64>().ok().map(|x| 2.0 * x)
                })
                .collect();
            if us.is_empty() {
                Err(format!("{cmd}: no latencies in its output"))
            } else {
                Ok((cdf_of(us), cmd))
            }
        })
    };
    let mut lat: HashMap<&str, (Vec<[f64; 2]>, String)> = HashMap::new();
    for name in ["perftest-lat-64", "perftest-lat-4096", "perftest-lat-65536", "perftest-loop-lat-64"] {
        match perftest(name) {
            Ok(x) => {
                lat.insert(name, x);
            }
            Err(e) => r.miss(e),
        }
    }
    let wire_label = "ib_send_lat -R (RC, raw verbs; 2 x its half round trip)";
    let loop_label = "ib_send_lat -R, rxe0 loopback (2 x its half round trip)";
    if let Some((c, _)) = lat.get("perftest-lat-64") {
        r.cdfs.push(Cdf { group: Group::SoftRoce, label: wire_label.into(), points: c.clone() });
    }
    if let Some((c, _)) = lat.get("perftest-loop-lat-64") {
        r.cdfs.push(Cdf { group: Group::SoftRoce, label: loop_label.into(), points: c.clone() });
    }
    // rstream ping-pong: usec/xfer is half a round trip, a mean.
    let rstream = read("rstream-lat-64").and_then(|(t, cmd)| {
        let v =
            t.lines().find(|l| l.starts_with("custom")).and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
        v.map(|x| (2.0 * x, cmd.clone())).ok_or_else(|| format!("{cmd}: no result line"))
    });
    if let Err(e) = &rstream {
        r.miss(e.clone());
    }
    let rc = "catmint RC (stream socket)";
    let runs = [
        ("catmint-rc-ping", "perftest-lat-64", format!("{rc}, 64 B"), true),
        ("catmint-rc-busy-ping", "perftest-lat-64", format!("{rc}, busy-polling (--spin-us 1000000), 64 B"), true),
        ("catmint-ud-ping", "perftest-lat-64", "catmint UD (datagram socket), 64 B".to_string(), true),
        ("catmint-rc-ping-4096", "perftest-lat-4096", format!("{rc}, 4 KiB"), false),
        ("catmint-rc-ping-65536", "perftest-lat-65536", format!("{rc}, 64 KiB"), false),
        ("catmint-rc-loop-ping", "perftest-loop-lat-64", format!("{rc}, rxe0 loopback (unbound client), 64 B"), true),
    ];
    for (name, base, label, plotted) in runs {
        let v = read(name).and_then(|(t, cmd)| {
            serde_json::from_str::<Value>(&t).map(|v| (v, cmd.clone())).map_err(|e| format!("{cmd}: not JSON ({e})"))
        });
        let (v, cmd) = match v {
            Ok(x) => x,
            Err(e) => {
                r.miss(e);
                continue;
            }
        };
        let cdf: Vec<[f64; 2]> = v["cdf"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| Some([p[0].as_f64()?, p[1].as_f64()?])).collect())
            .unwrap_or_default();
        let looped = base.contains("loop");
        let path = format!("{label}, demi echo + demi ping{}", if looped { "" } else { ", rxe1 -> rxe0" });
        if let Some((pcdf, pcmd)) = lat.get(base) {
            let bname = if looped { loop_label } else { wire_label };
            for (fig, q) in [("RTT p50", 0.5), ("RTT p99", 0.99)] {
                if let (Some(a), Some(b)) = (cdf_at(&cdf, q), cdf_at(pcdf, q)) {
                    let c = format!("{cmd} / {pcmd}");
                    r.rows.push(row(Section::Rdma, &path, fig, a, "µs", Some((bname, b)), true, c));
                }
            }
        }
        if let (Ok((rs, rcmd)), Some(mean), "perftest-lat-64") = (&rstream, v["rtt_us"]["mean"].as_f64(), base) {
            let c = format!("{cmd} / {rcmd}");
            let b = "rstream -C 1 (rsockets; 2 x its usec/xfer)";
            r.rows.push(row(Section::Rdma, &path, "RTT mean", mean, "µs", Some((b, *rs)), true, c));
        }
        if plotted {
            r.cdfs.push(Cdf { group: Group::SoftRoce, label: format!("{label} (demi)"), points: cdf });
        }
    }
    throughput(out, &idx, r, read);
}

fn throughput(
    _out: &Path,
    _idx: &HashMap<String, (i32, String)>,
    r: &mut Results,
    read: impl Fn(&str) -> Result<(String, String), String>,
) {
    // perftest: the line under the "#bytes" header: bytes iters peak avg[MB/s] rate;
    // its MB are 2^20 bytes.
    let mut bw: HashMap<usize, (f64, String)> = HashMap::new();
    let mut rs: HashMap<usize, (f64, String)> = HashMap::new();
    for &size in &SIZES {
        match read(&format!("perftest-bw-{size}")) {
            Ok((t, cmd)) => {
                let line = t.lines().skip_while(|l| !l.trim_start().starts_with("#bytes")).nth(1).unwrap_or("");
                let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                match f.get(3).filter(|&&m| m > 0.0) {
                    Some(mbs) => {
                        bw.insert(size, (mbs * 1_048_576.0 * 8.0 / 1e9, cmd));
                    }
                    None => r.miss(format!("{cmd}: no (non-zero) result line")),
                }
            }
            Err(e) => r.miss(e),
        }
        // rstream -S size -C count -I 1: count messages one way, then count
        // back; the bytes of both phases over both phases' time is the
        // one-way rate.
        match read(&format!("rstream-bw-{size}")) {
            Ok((t, cmd)) => {
                let count: Option<f64> =
                    cmd.split_whitespace().skip_while(|w| *w != "-C").nth(1).and_then(|c| c.parse().ok());
                let secs = t.lines().find(|l| l.starts_with("custom")).and_then(|l| {
                    l.split_whitespace().find(|w| w.ends_with('s'))?.trim_end_matches('s').parse::<f64>().ok()
                });
                match (count, secs) {
                    (Some(c), Some(s)) if s > 0.0 => {
                        rs.insert(size, (c * size as f64 * 2.0 * 8.0 / s / 1e9, cmd));
                    }
                    _ => r.miss(format!("{cmd}: no result line")),
                }
            }
            Err(e) => r.miss(e),
        }
    }
    for (size, (g, _)) in sorted(&bw) {
        r.curve(Group::SoftRoce, "ib_send_bw -R (RC, raw verbs)").points.push((size, g));
    }
    for (size, (g, _)) in sorted(&rs) {
        r.curve(Group::SoftRoce, "rstream (rsockets)").points.push((size, g));
    }
    for (kind, label, sizes) in [
        ("rc", "catmint RC (stream socket)", SIZES.to_vec()),
        ("ud", "catmint UD (datagram socket)", UD_SIZES.to_vec()),
    ] {
        for size in sizes {
            let v = read(&format!("catmint-{kind}-stream-{size}")).and_then(|(t, cmd)| {
                let v: Value = serde_json::from_str(&t).map_err(|e| format!("{cmd}: not JSON ({e})"))?;
                Ok((v["gbit_per_s"].as_f64().unwrap_or(0.0), cmd))
            });
            let (g, cmd) = match v {
                Ok(x) => x,
                Err(e) => {
                    r.miss(e);
                    continue;
                }
            };
            r.curve(Group::SoftRoce, &format!("{label} (demi stream)")).points.push((size, g));
            let path = format!("{label}, {}", size_label(size));
            // UD sizes match perftest's only at 64 and 256 B; 1016 is
            // compared with 1 KiB.
            let near = if size == 1016 { 1024 } else { size };
            if let Some((b, bcmd)) = bw.get(&near) {
                let c = format!("{cmd} / {bcmd}");
                let base = format!("ib_send_bw -R, {}", size_label(near));
                r.rows.push(row(
                    Section::RdmaThroughput,
                    &path,
                    "one-way throughput",
                    g,
                    "Gbit/s",
                    Some((&base, *b)),
                    false,
                    c,
                ));
            }
            if kind == "rc" {
                if let Some((b, bcmd)) = rs.get(&size) {
                    let c = format!("{cmd} / {bcmd}");
                    r.rows.push(row(
                        Section::RdmaThroughput,
                        &path,
                        "one-way throughput",
                        g,
                        "Gbit/s",
                        Some(("rstream (rsockets)", *b)),
                        false,
                        c,
                    ));
                }
            }
        }
    }
}

fn sorted(m: &HashMap<usize, (f64, String)>) -> Vec<(usize, (f64, String))> {
    let mut v: Vec<_> = m.iter().map(|(k, v)| (*k, v.clone())).collect();
    v.sort_by_key(|x| x.0);
    v
}
