//! docs/BENCHMARKS.md, generated whole: method and caveats as text, then
//! one table per section (each row: path, figure, value, baseline, ratio,
//! command, time) and the plots.

use crate::model::{Results, Row, Section};
use std::fmt::Write;

/// A number with sensible precision.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

fn table(out: &mut String, rows: &[&Row]) {
    if rows.is_empty() {
        out.push_str("_No figures: see \"Not measured in this run\" below._\n\n");
        return;
    }
    out.push_str(
        "| path | figure | value | baseline | baseline value | ratio (this ÷ baseline) | command | measured |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (bname, bval) = match &r.baseline {
            Some((n, v)) => (n.clone(), format!("{} {}", num(*v), r.unit)),
            None => ("— (this row is the baseline)".to_string(), "—".to_string()),
        };
        let ratio = match r.ratio() {
            Some(x) => {
                let better = if r.lower_is_better { x < 1.0 } else { x > 1.0 };
                format!("{x:.2}x ({})", if better { "better" } else { "worse" })
            }
            None => "1.00x".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} | {} | {} | `{}` | {} |",
            r.path,
            r.figure,
            num(r.value),
            r.unit,
            bname,
            bval,
            ratio,
            r.command.replace('|', "\\|"),
            r.when
        );
    }
    out.push('\n');
}

fn rows(r: &Results, s: Section) -> Vec<&Row> {
    r.rows.iter().filter(|x| x.section == s).collect()
}

fn fact<'a>(r: &'a Results, k: &str) -> &'a str {
    r.get_fact(k).unwrap_or("?")
}

/// The catnip-bench verdict against its target (2x on both counts).
fn catnip_verdict(r: &Results) -> Option<String> {
    let find = |path: &str, fig: &str| {
        r.rows.iter().find(|x| x.section == Section::Catnip && x.path.starts_with(path) && x.figure == fig)
    };
    let p50 = find("catnip over memif", "RTT p50")?.ratio()?;
    let tput = find("catnip over memif", "throughput")?.ratio()?;
    let met = p50 <= 0.5 && tput >= 2.0;
    Some(format!(
        "Against catnip's target (memif at least 2x lower RTT and 2x the throughput of the kernel path): \
         {} in this run: memif's RTT p50 is {:.2}x the kernel's ({:.1}x lower) and its throughput {:.2}x.",
        if met { "met" } else { "not met" },
        p50,
        1.0 / p50,
        tput
    ))
}

pub fn render(r: &Results, plots: &[(String, String)]) -> String {
    let mut o = String::new();
    let plot = |o: &mut String, file: &str| {
        if let Some((f, alt)) = plots.iter().find(|p| p.0 == file) {
            let _ = writeln!(o, "![{alt}]({f})\n");
        }
    };
    o.push_str("# demi benchmarks\n\n");
    let _ = writeln!(
        o,
        "Written whole by `make bench` (the program `examples/bench-suite`), which runs every benchmark of the \
         project in one go, side by side on one machine: nothing in this file is typed by hand. This run: \
         started {}, took {} s, on {} CPU cores, Linux {}, load average {} at the start and {} at the end \
         (a busy machine shows first in the tails: p99 and beyond move much more between runs than medians). DPDK {}, perftest {}, \
         rdma-core {}.\n",
        fact(r, "started"),
        fact(r, "seconds"),
        fact(r, "cpus"),
        fact(r, "kernel"),
        fact(r, "load_start"),
        fact(r, "load_end"),
        fact(r, "dpdk"),
        fact(r, "perftest"),
        fact(r, "rdma_core"),
    );
    o.push_str(
        "Every row names the command that produced it, its baseline on the same figure, the ratio \
         this ÷ baseline and when it ran. For latencies and costs a ratio below 1.00x is faster than the \
         baseline; for throughput a ratio above 1.00x is more. Where a row has two commands, the one after \
         \" / \" measured the baseline. Latencies are round trips (RTT) unless a row says otherwise.\n\n",
    );

    o.push_str("## 1. The engine's cost per operation\n\n");
    let _ = writeln!(
        o,
        "`benches/engine.rs` drives the qtoken engine with a device that finishes every request the moment it \
         is issued, so what is left is the engine's own work per operation: descriptor checks, token \
         allocation, the lock and the wait loop (issue + complete + wait, best of five rounds). The baseline is \
         one cheap system call, `getppid(2)`, timed in the same run ({} ns): a libOS is worth it when its \
         per-operation cost stays well below a trip into the kernel.\n",
        fact(r, "syscall_ns")
    );
    table(&mut o, &rows(r, Section::Engine));

    o.push_str("## 2. catnap vs plain blocking sockets (host loopback)\n\n");
    o.push_str(
        "64-byte ping-pong over 127.0.0.1, two ways. The engine bench runs an echo thread and a client thread \
         in one process, catnap on both ends against plain blocking `std::net` sockets, three alternating \
         runs (the median run is shown), so drift on a busy machine hits both. The suite then runs the \
         real tools as two processes, `demi echo` + `demi ping` (catnap TCP and UDP), against a kernel \
         baseline of the same shape: a blocking `std::net` echo server in a process of its own and a \
         blocking client, one message in flight, a tenth of the rounds as warm-up.\n\n",
    );
    table(&mut o, &rows(r, Section::Catnap));
    plot(&mut o, "bench-latency-loopback.png");

    o.push_str("## 3. catnip (DPDK) vs kernel UDP\n\n");
    let _ = writeln!(
        o,
        "`examples/catnip-bench` measures UDP with 64-byte datagrams. RTT: one ping in flight, {} timed rounds \
         after a tenth as many warm-up rounds, client and server pinned to different cores. Throughput: the \
         client sends 64-byte datagrams as fast as one core can for {} s, and the figure is what the server \
         counted per second between the first and the last arrival (one pop or `recv` per datagram). catnip \
         endpoints go through demi's `LibOs` (qtoken engine included) with `demi_sgaalloc` buffers \
         (zero-copy pushes); the kernel endpoints are plain blocking `UdpSocket`s. Paths: **catnip over \
         memif**, two DPDK processes on a `net_memif` server/client pair; **catnip over af_packet/veth**, two \
         DPDK processes each on `net_af_packet` bound to one end of a veth pair in its own network namespace; \
         **kernel UDP over veth**, two kernel sockets over a veth pair in two namespaces (the baseline). DPDK \
         runs without hugepages (`--no-huge -m 256`). The suite adds `demi ping` over memif (two processes, \
         as a user would run it) next to the kernel UDP baseline of section 2.\n",
        fact(r, "catnip_bench_rounds"),
        fact(r, "catnip_bench_seconds")
    );
    if let Some(v) = catnip_verdict(r) {
        let _ = writeln!(o, "{v}\n");
    }
    o.push_str(
        "catnip over af_packet skips the kernel's socket layer on its own side, which helps latency, but \
         every frame still crosses the kernel's packet socket and the veth, plus a copy into an mbuf, so its \
         throughput need not beat the kernel's. The p99 of both veth paths reflects when the kernel's \
         softirq work gets a core on a busy 2-core machine.\n\n",
    );
    table(&mut o, &rows(r, Section::Catnip));
    plot(&mut o, "bench-latency-memif.png");

    o.push_str("## 4. catmint (RDMA) on soft-RoCE vs perftest and rsockets\n\n");
    let _ = writeln!(
        o,
        "This machine's kernel has no RDMA, so this part runs in one boot of `rxe-setup/rxe-run` ({}; VM up in \
         {}), a qemu VM with an **emulated CPU (TCG)** and two soft-RoCE devices, rxe0 on veth0 (10.77.0.1) \
         and rxe1 on veth1 (10.77.0.2). Every client runs on rxe1's side and every server on rxe0's, so all \
         traffic crosses the veth pair. catmint runs as `demi echo` + `demi ping --bind 10.77.0.2` ({} round \
         trips of 64 B) over its RC stream and UD datagram sockets. The baselines are rdma-core's own tools: \
         perftest `ib_send_lat -R` ({} iterations, RC, raw verbs), which **reports half the round trip**: its \
         per-iteration figures (`-U`) are doubled here to give RTTs; and rsockets' `rstream -S 64 -C 1`, \
         whose `usec/xfer` is also half a round trip (a mean), doubled likewise. perftest's `MB/sec` are \
         MiB/s (2^20 bytes, per its `--help`). The 4 KiB and 64 KiB pings run a quarter as many rounds. \
         The rows marked \"rxe0 loopback\" use an unbound client, which rdma_cm puts on rxe0 itself: \
         nothing touches the veths, so next to the wire rows they show what the veth pair and the IP/UDP \
         stack add. catmint's RC ping also runs with both ends busy-polling (`--spin-us 1000000`) besides \
         demi's default wait (poll for 50 µs, then sleep on the completion channel): under TCG a wake-up \
         from that sleep is slow, and the gap between the two rows is what it costs. TCG figures are tens \
         of times slower than hardware and move with the host's load (the medians are the steadiest \
         columns, tails swing by 10x between runs); compare rows of one run, within this section, never \
         with the host's. The same boot then runs `scripts/bench-rdma`'s interleaved rounds (the section \
         \"catmint (RDMA over soft-RoCE)\" below: medians and ranges over rounds, and the targets). The \
         whole VM part took {} s.\n",
        fact(r, "rxe_mode"),
        fact(r, "rxe_boot"),
        fact(r, "rdma_ping_count"),
        fact(r, "rdma_lat_iters"),
        fact(r, "rdma_seconds")
    );
    table(&mut o, &rows(r, Section::Rdma));
    plot(&mut o, "bench-latency-softroce.png");

    o.push_str("## 5. Throughput against message size\n\n");
    let _ = writeln!(
        o,
        "`demi stream` pushes messages of one size as fast as a window of pushes in flight allows (32, fewer \
         for large messages) for {} s on the host and {} s in the VM; `demi echo` counts what arrives and the \
         figure is its count over the time from the first arrival to the last (datagrams that are dropped do \
         not count). Host baselines: a blocking `std::net` sender and counting server, two processes, same \
         sizes and time. catnip's datagrams stop at 1472 B (MTU 1500) and catmint UD's at 1016 B (rxe's \
         1024-byte path MTU on a 1500-byte veth, less catmint's 8-byte header). In the VM the baselines are \
         `ib_send_bw -R -n N` (about 16 MiB per run; its MB/s are 2^20 bytes) and `rstream -S SIZE -C N -I 1`, which sends N \
         messages one way and then N back: the bytes of both phases over both phases' time is a one-way rate.\n",
        fact(r, "host_stream_secs"),
        fact(r, "rdma_stream_secs"),
    );
    o.push_str("### Host\n\n");
    table(&mut o, &rows(r, Section::HostThroughput));
    plot(&mut o, "bench-throughput-loopback.png");
    plot(&mut o, "bench-throughput-memif.png");
    o.push_str("### soft-RoCE (VM)\n\n");
    table(&mut o, &rows(r, Section::RdmaThroughput));
    plot(&mut o, "bench-throughput-softroce.png");

    // scripts/bench-rdma's section ("catmint (RDMA over soft-RoCE)"), as it
    // rendered it: its own heading, so --update-docs can refresh it in place.
    for s in &r.sections {
        o.push_str(s.trim_end());
        o.push_str("\n\n");
    }

    if !r.notes.is_empty() {
        o.push_str("## Notes from this run\n\n");
        for n in &r.notes {
            let _ = writeln!(o, "- {}", n.replace('|', "\\|"));
        }
        o.push('\n');
    }
    o.push_str("## Not measured in this run\n\n");
    if r.missing.is_empty() {
        o.push_str("Everything above was measured.\n");
    } else {
        for m in &r.missing {
            let _ = writeln!(o, "- {}", m.replace('|', "\\|"));
        }
    }
    o.push_str(
        "\n## Reproducing\n\n`make bench` (as root: DPDK and network namespaces; about 12 minutes on 2 cores) \
         rewrites this file and the plots beside it. `scripts/bench-rdma --update-docs` re-measures the section \
         \"catmint (RDMA over soft-RoCE)\" alone (one VM boot) and replaces it in place. `demi ping` and \
         `demi stream` are the same tools by hand: see `demi --help`.\n",
    );
    o
}
