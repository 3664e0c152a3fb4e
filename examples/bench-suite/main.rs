//! `make bench`: every benchmark of the project in one run, side by side,
//! written to docs/BENCHMARKS.md (generated whole) with PNG plots beside it.
//!
//!     target/release/examples/bench-suite [--quick] [--no-rdma] [--no-host] [--out DIR]
//!
//! 1. the engine's per-operation cost and catnap vs blocking sockets
//!    (`cargo bench --bench engine`);
//! 2. catnip over memif and af_packet vs kernel UDP (`examples/catnip-bench`);
//! 3. `demi ping`/`demi stream` over catnap and catnip (memif) next to
//!    kernel baselines run by this program (`role kernel-tcp|kernel-udp`);
//! 4. catmint vs perftest and rsockets in one rxe-setup/rxe-run boot
//!    (`rdma-in-vm.sh`), which ends with `scripts/bench-rdma`'s interleaved
//!    rounds; `scripts/bench-rdma --render` makes their section of the file.
//!
//! `--no-host` / `--no-rdma` leave a half out (for working on the other).
//! Needs root for DPDK and network namespaces (parts that cannot run are
//! listed as not measured). `--quick` makes every run short, to check the
//! suite itself (BENCH_REPEAT, BENCH_LAT_COUNT and BENCH_BW_BYTES, if set,
//! still size bench-rdma's rounds); `--out` picks where the file and plots
//! go (default docs/).
//! Exit status 1 if anything could not be measured (the file is written anyway).

mod host;
mod kernel;
mod model;
mod plot;
mod rdma;
mod report;

use model::{Group, Results};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn sh(cmd: &[&str]) -> Option<String> {
    let o = Command::new(cmd[0]).args(&cmd[1..]).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("role") {
        kernel::role(args.get(2).map(String::as_str).unwrap_or(""));
        return ExitCode::SUCCESS;
    }
    let mut quick = false;
    let mut rdma_part = true;
    let mut host_part = true;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out_dir = repo.join("docs");
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-rdma" => rdma_part = false,
            "--no-host" => host_part = false,
            "--out" => out_dir = PathBuf::from(it.next().expect("--out DIR")),
            "-h" | "--help" => {
                println!("usage: bench-suite [--quick] [--no-rdma] [--no-host] [--out DIR]   (see examples/bench-suite/main.rs)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bench-suite: unknown argument {other} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let me = std::env::current_exe().expect("own path");
    let demi = me.parent().and_then(Path::parent).map(|p| p.join("demi")).expect("target folder");
    if !demi.is_file() {
        eprintln!("bench-suite: {} is missing: build it first (make bench does)", demi.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = plot::setup_font() {
        eprintln!("bench-suite: {e}");
        return ExitCode::FAILURE;
    }
    let work = repo.join("build/bench");
    let _ = std::fs::create_dir_all(&work);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ctx = host::Ctx { demi, me, work, quick, root };

    let start = Instant::now();
    let mut r = Results::default();
    r.fact("started", model::utc_now());
    r.fact("load_start", loadavg());
    r.fact("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());
    r.fact("cpus", std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()));
    r.fact("dpdk", sh(&["pkg-config", "--modversion", "libdpdk"]).unwrap_or_else(|| "?".into()));
    r.fact("perftest", sh(&["dpkg-query", "-W", "-f=${Version}", "perftest"]).unwrap_or_else(|| "?".into()));
    r.fact("rdma_core", sh(&["dpkg-query", "-W", "-f=${Version}", "rdma-core"]).unwrap_or_else(|| "?".into()));
    r.fact("host_stream_secs", format!("{}", ctx.stream_secs()));

    if host_part {
        host::engine(&ctx, &mut r);
        host::catnip_bench(&ctx, &mut r);
        host::demi_paths(&ctx, &mut r);
    } else {
        r.miss("the host part (run with --no-host)");
    }
    if rdma_part {
        rdma::run(&ctx, &mut r);
    } else {
        r.miss("the RDMA part (run with --no-rdma)");
    }

    r.fact("load_end", loadavg());
    r.fact("seconds", format!("{:.0}", start.elapsed().as_secs_f64()));
    let _ = std::fs::create_dir_all(&out_dir);
    let mut plots = Vec::new();
    for g in [Group::Loopback, Group::Memif, Group::SoftRoce] {
        let cdfs: Vec<_> = r.cdfs.iter().filter(|c| c.group == g).collect();
        let name = format!("bench-latency-{}.png", g.file_tag());
        if !cdfs.is_empty() {
            match plot::latency(g, &cdfs, &out_dir.join(&name)) {
                Ok(()) => plots.push((name, format!("RTT CDF, {}", g.title()))),
                Err(e) => r.miss(format!("plot {name}: {e}")),
            }
        }
        let curves: Vec<_> = r.curves.iter().filter(|c| c.group == g).collect();
        let name = format!("bench-throughput-{}.png", g.file_tag());
        if !curves.is_empty() {
            match plot::throughput(g, &curves, &out_dir.join(&name)) {
                Ok(()) => plots.push((name, format!("throughput against message size, {}", g.title()))),
                Err(e) => r.miss(format!("plot {name}: {e}")),
            }
        }
    }
    let md = report::render(&r, &plots);
    let file = out_dir.join("BENCHMARKS.md");
    if let Err(e) = std::fs::write(&file, md) {
        eprintln!("bench-suite: cannot write {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench: wrote {} and {} plots in {:.0} s ({} rows, {} not measured)",
        file.display(),
        plots.len(),
        start.elapsed().as_secs_f64(),
        r.rows.len(),
        r.missing.len()
    );
    if r.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
