//! Unmodified sockperf over catnip (DPDK): UDP ping-pong between two
//! preloaded processes joined by a memif link (no NIC, no hugepages; root,
//! as DPDK wants). Both ends busy-poll (DPDK has no wake-up descriptor).

mod common;
use common::*;
use std::time::Duration;

fn eal(role: &str, lcore: u32, sock: &std::path::Path) -> String {
    format!(
        "-l {lcore} --no-huge --no-pci --no-shconf --no-telemetry -m 256 --log-level=lib.eal:error \
         --log-level=pmd.net.memif:error --file-prefix=demipre{role}{} \
         --vdev=net_memif0,role={role},socket={},socket-abstract=no",
        std::process::id(),
        sock.display()
    )
}

#[test]
fn sockperf_udp_over_memif() {
    assert!(
        demi::config::built_libos_names().contains(&"catnip"),
        "this build has no catnip (cargo feature catnip): the test cannot run"
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "DPDK needs root: run the tests as root (make test does)");
    let sock = temp_file("memif.sock");
    let feed = temp_file("catnip.feed");
    std::fs::write(&feed, "U:10.77.9.1:7500\n").unwrap();
    let feeds = feed.display().to_string();
    for mux in ["e", "p"] {
        let (sstats, cstats) = (temp_file("catnip-s.stats"), temp_file("catnip-c.stats"));
        let s = demi_run_with(
            "catnip",
            &sstats,
            &["--eal", &eal("server", 0, &sock), "--local-ipv4", "10.77.9.1"],
            &need("sockperf"),
            &["sr", "-f", &feeds, "-F", mux],
        );
        let mut server = Proc::spawn(s, "sockperf sr (catnip)");
        std::thread::sleep(Duration::from_secs(2));
        server.assert_running();
        let c = demi_run_with(
            "catnip",
            &cstats,
            &["--eal", &eal("client", 1, &sock), "--local-ipv4", "10.77.9.2"],
            &need("sockperf"),
            &["pp", "-f", &feeds, "-F", mux, "-t", "2", "-m", "64"],
        );
        let client = Proc::spawn(c, "sockperf pp (catnip)");
        let cpid = client.pid();
        let (st, out, err) = client.finish(Duration::from_secs(60));
        let spid = server.pid();
        server.signal(libc::SIGINT);
        let (_, sout, serr) = server.finish(Duration::from_secs(20));
        let all = format!("{out}\n{err}");
        assert!(st.success() && all.contains("Summary: Latency is"), "-F {mux}: {st}\n{all}\nserver:\n{sout}\n{serr}");
        assert!(!all.contains("ERROR"), "{all}");
        for (file, pid) in [(&sstats, spid), (&cstats, cpid)] {
            let s = stats_of(file, pid);
            assert_eq!(s.get("libos"), "catnip");
            // Ten 64-byte messages at least (a loaded machine runs few in 2 s).
            assert!(s.num("bytes_in") >= 640 && s.num("bytes_out") >= 640, "carried by catnip: {:?}", s.0);
        }
        let p50 = all.lines().find(|l| l.contains("percentile 50.000")).unwrap_or("").trim().to_string();
        eprintln!("sockperf pp UDP -F {mux} over catnip/memif: {p50} (half round trips, µs)");
        let _ = std::fs::remove_file(&sock);
    }
}
