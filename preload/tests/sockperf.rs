//! Unmodified sockperf (server and client both under `demi run --libos
//! catnap`): ping-pong over TCP and UDP with each of its I/O multiplexers
//! (select, poll, epoll), and throughput. Two addresses per run, so the
//! multiplexer really waits on several sockets.

mod common;
use common::*;
use std::time::Duration;

/// One server + client run; returns the client's output.
fn sockperf(mode: &str, proto: char, mux: &str) -> String {
    let (p1, p2) = (free_port(), free_port());
    let feed = temp_file(&format!("sockperf-{mode}-{proto}-{mux}.feed"));
    std::fs::write(&feed, format!("{proto}:127.0.0.1:{p1}\n{proto}:127.0.0.1:{p2}\n")).unwrap();
    let feeds = feed.display().to_string();
    let sstats = temp_file("sockperf-server.stats");
    let mut server =
        Proc::spawn(demi_run("catnap", &sstats, &need("sockperf"), &["sr", "-f", &feeds, "-F", mux]), "sockperf sr");
    if proto == 'T' {
        wait_tcp(&mut server, p1);
    } else {
        std::thread::sleep(Duration::from_millis(500));
        server.assert_running();
    }
    let cstats = temp_file("sockperf-client.stats");
    let args = [mode, "-f", &feeds, "-F", mux, "-t", "1", "-m", "256"];
    let client = Proc::spawn(demi_run("catnap", &cstats, &need("sockperf"), &args), "sockperf client");
    let cpid = client.pid();
    let (st, out, err) = client.finish(Duration::from_secs(60));
    let spid = server.pid();
    server.signal(libc::SIGINT);
    let (_, sout, serr) = server.finish(Duration::from_secs(20));
    let all = format!("{out}\n{err}");
    assert!(st.success(), "sockperf {mode} {proto} -F {mux}: {st}\n{all}\nserver:\n{sout}\n{serr}");
    assert!(!all.contains("ERROR"), "sockperf {mode} {proto} -F {mux} reported an error:\n{all}");
    for (file, pid, who) in [(&sstats, spid, "server"), (&cstats, cpid, "client")] {
        let s = stats_of(file, pid);
        assert!(s.num("sockets") >= 2, "{who}: {:?}", s.0);
        // Ten 256-byte messages at least (a loaded machine runs few). Throughput
        // is one-way: the server only receives, the client sends.
        let (want_in, want_out) = match (mode, who) {
            ("tp", "server") => (2_560, 0),
            ("tp", _) => (0, 2_560),
            _ => (2_560, 2_560),
        };
        assert!(s.num("bytes_in") >= want_in && s.num("bytes_out") >= want_out, "{who} carried by demi: {:?}", s.0);
    }
    let _ = std::fs::remove_file(&feed);
    all
}

/// "Summary: Latency is 12.3 usec" -> 12.3.
fn latency_us(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.split("Summary: Latency is ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no latency summary in:\n{out}"))
}

#[test]
fn ping_pong_with_each_multiplexer() {
    for proto in ['T', 'U'] {
        for mux in ["s", "p", "e"] {
            let out = sockperf("pp", proto, mux);
            let lat = latency_us(&out);
            // Loose: a loaded 2-core machine makes 15 ms averages; a lost wake-up
            // would cost the library's 1 s nap per round trip.
            assert!(lat > 0.0 && lat < 100_000.0, "{proto} -F {mux}: latency {lat} µs");
            eprintln!("sockperf pp {proto} -F {mux} over catnap: {lat} µs average");
        }
    }
}

#[test]
fn throughput() {
    for (proto, mux) in [('T', "e"), ('U', "p")] {
        let out = sockperf("tp", proto, mux);
        let rate = out
            .lines()
            .find_map(|l| l.split("Summary: Message Rate is ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no message rate in:\n{out}"));
        assert!(rate > 1000.0, "{proto} -F {mux}: {rate} msg/s");
        eprintln!("sockperf tp {proto} -F {mux} over catnap: {rate} msg/s of 256 bytes");
    }
}
