//! Unmodified redis-server, redis-cli and redis-benchmark (Debian's) under
//! `demi run --libos catnap`: values read back, the benchmark's default
//! tests, an idle server's CPU, and clients that misbehave.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Redis {
    proc: Proc,
    port: u16,
    stats: std::path::PathBuf,
}

fn start_redis(name: &str, shell_prefix: Option<&str>) -> Redis {
    let port = free_port();
    let stats = temp_file(&format!("{name}.stats"));
    let ports = port.to_string();
    let dir = temp_file(&format!("{name}.dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let dirs = dir.display().to_string();
    let args = [
        "--port",
        &ports,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dirs,
    ];
    let cmd = demi_run("catnap", &stats, &need("redis-server"), &args);
    let cmd = match shell_prefix {
        // e.g. "ulimit -n 64": the limit, then exec the same command line.
        Some(prefix) => {
            let mut line = format!("{prefix} && exec");
            let prog = cmd.get_program().to_string_lossy().into_owned();
            for a in std::iter::once(prog).chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned())) {
                line.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
            }
            let mut sh = Command::new("sh");
            sh.args(["-c", &line]).env_remove("LD_PRELOAD");
            sh
        }
        None => cmd,
    };
    let mut proc = Proc::spawn(cmd, "redis-server");
    wait_tcp(&mut proc, port);
    Redis { proc, port, stats }
}

impl Redis {
    /// redis-cli ARGS, itself under demi (a demi client of a demi server).
    fn cli(&self, args: &[&str]) -> String {
        let stats = temp_file("redis-cli.stats");
        let port = self.port.to_string();
        let mut all = vec!["-p", &port];
        all.extend_from_slice(args);
        let out = run(demi_run("catnap", &stats, &need("redis-cli"), &all), "redis-cli", Duration::from_secs(20));
        assert!(out.status.success(), "redis-cli {args:?}: {}\n{}", lossy(&out.stdout), lossy(&out.stderr));
        lossy(&out.stdout).trim_end().to_string()
    }

    fn benchmark(&self, clients: &str) -> Output {
        let stats = temp_file("redis-benchmark.stats");
        let port = self.port.to_string();
        let args = ["-p", &port, "-c", clients, "-n", "1000", "--csv"];
        run(demi_run("catnap", &stats, &need("redis-benchmark"), &args), "redis-benchmark", Duration::from_secs(240))
    }

    /// SHUTDOWN, then the server's stats line.
    fn shutdown(self) -> Stats {
        let pid = self.proc.pid();
        let _ = self.cli(&["shutdown", "nosave"]);
        let (st, out, err) = self.proc.finish(Duration::from_secs(20));
        assert!(st.success(), "redis-server exit {st}\n{out}\n{err}");
        stats_of(&self.stats, pid)
    }
}

#[test]
fn redis_values_and_benchmark() {
    let r = start_redis("redis", None);
    assert_eq!(r.cli(&["ping"]), "PONG");
    assert_eq!(r.cli(&["set", "greeting", "hello demi"]), "OK");
    assert_eq!(r.cli(&["get", "greeting"]), "hello demi");
    for want in 1..=3 {
        assert_eq!(r.cli(&["incr", "counter"]), want.to_string());
    }
    assert_eq!(r.cli(&["lpush", "list", "a", "b", "c"]), "3");
    assert_eq!(r.cli(&["lrange", "list", "0", "-1"]), "c\nb\na");
    // A value larger than one receive: partial reads on both sides.
    let big: String = (0..100_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(r.cli(&["set", "big", &big]), "OK");
    assert_eq!(r.cli(&["strlen", "big"]), "100000");
    assert_eq!(r.cli(&["get", "big"]), big);
    // A kernel client of the demi server reads the same value.
    let mut k = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, r.port)).expect("kernel client");
    k.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    k.write_all(b"GET greeting\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = k.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"$10\r\nhello demi\r\n");
    drop(k);

    // BGSAVE: redis forks a child that writes the data set; the parent's
    // demi sockets must carry on unharmed.
    assert_eq!(r.cli(&["bgsave"]), "Background saving started");
    let start = Instant::now();
    loop {
        let info = r.cli(&["info", "persistence"]);
        if info.contains("rdb_bgsave_in_progress:0") && info.contains("rdb_last_bgsave_status:ok") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "BGSAVE did not finish:\n{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.cli(&["get", "greeting"]), "hello demi", "served after the fork");

    for clients in ["1", "16"] {
        let out = r.benchmark(clients);
        let text = lossy(&out.stdout);
        assert!(out.status.success(), "redis-benchmark -c {clients}: {text}\n{}", lossy(&out.stderr));
        let mut tests = Vec::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').map(|s| s.trim_matches('"')).collect();
            let rps: f64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
            assert!(rps > 0.0, "{line}");
            tests.push(f[0].to_string());
        }
        for t in ["PING_INLINE", "SET", "GET", "INCR", "LPUSH", "LPOP", "SADD", "HSET", "MSET (10 keys)"] {
            assert!(tests.iter().any(|x| x == t), "-c {clients}: no {t} row in\n{text}");
        }
        eprintln!("redis-benchmark -c {clients} over catnap:\n{text}");
    }
    let s = r.shutdown();
    assert_eq!(s.get("libos"), "catnap");
    assert!(s.get("listening").contains(&format!("127.0.0.1:{}", 0).replace(":0", "")), "{:?}", s.0);
    assert!(s.num("accepted") >= 30, "every client went through demi's accept: {:?}", s.0);
    assert!(s.num("bytes_in") > 100_000 && s.num("bytes_out") > 100_000, "{:?}", s.0);
}

#[test]
fn idle_redis_uses_no_cpu() {
    let r = start_redis("redis-idle", None);
    assert_eq!(r.cli(&["ping"]), "PONG");
    let pid = r.proc.pid();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    // redis's own timer runs 10 times a second; a spinning waiter would
    // burn the whole 3 s.
    assert!(used < 0.15, "idle redis-server used {used:.2} s of CPU in 3 s");
    eprintln!("idle redis-server over catnap: {used:.3} s CPU in 3 s");
    r.shutdown();
}

/// The server still answers after `what` (a misbehaving client).
fn still_serves(r: &Redis, what: &str) {
    let start = Instant::now();
    assert_eq!(r.cli(&["ping"]), "PONG", "after {what}");
    assert!(start.elapsed() < Duration::from_secs(10), "slow after {what}");
}

#[test]
fn redis_survives_bad_clients() {
    let r = start_redis("redis-bad", None);
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, r.port);
    // A peer that resets in the middle of a request.
    let mut c = TcpStream::connect(to).unwrap();
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n").unwrap();
    let sock = socket2_linger_zero(&c);
    drop(c);
    assert!(sock, "SO_LINGER 0 set");
    still_serves(&r, "a reset mid-request");
    // A client that sends requests and never reads the replies.
    assert_eq!(r.cli(&["set", "v", &"x".repeat(100_000)]), "OK");
    let mut lazy = TcpStream::connect(to).unwrap();
    lazy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    for _ in 0..200 {
        if lazy.write_all(b"GET v\r\n").is_err() {
            break;
        }
    }
    still_serves(&r, "a client that never reads");
    drop(lazy);
    still_serves(&r, "that client leaving");
    r.shutdown();
}

/// SO_LINGER {on, 0}: close sends a reset.
fn socket2_linger_zero(c: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a live socket with a live linger of its size.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        ) == 0
    }
}

#[test]
fn redis_with_64_descriptors() {
    let r = start_redis("redis-ulimit", Some("ulimit -n 64"));
    // More clients than descriptors: the server refuses some (EMFILE at
    // accept, or its own maxclients) and must neither crash nor hang.
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, r.port);
    let mut clients = Vec::new();
    for _ in 0..60 {
        if let Ok(c) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)) {
            clients.push(c);
        }
    }
    let mut served = 0;
    for c in clients.iter_mut() {
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = c.write_all(b"PING\r\n");
        let mut b = [0u8; 64];
        if let Ok(n) = c.read(&mut b) {
            if b[..n].starts_with(b"+PONG") {
                served += 1;
            }
        }
    }
    assert!(served >= 1, "clients within the limit are served ({served} of {})", clients.len());
    drop(clients);
    std::thread::sleep(Duration::from_millis(300));
    still_serves(&r, "running out of descriptors");
    let (out, _) = r.proc.output();
    assert!(out.contains("Too many open files"), "the server saw EMFILE, as from the kernel:\n{out}");
    eprintln!("redis-server with 64 descriptors: {served} of 60 clients served; EMFILE for the rest");
    r.shutdown();
}
