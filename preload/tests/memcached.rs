//! Unmodified memcached (libevent, worker threads) under `demi run --libos
//! catnap`, with libmemcached's real clients (memccp, memccat, memcslap),
//! themselves under demi, and a kernel client speaking the text protocol.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

fn client(prog: &str, args: &[String]) -> (bool, String, String) {
    let stats = temp_file(&format!("{prog}.stats"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(demi_run("catnap", &stats, &need(prog), &args), prog, Duration::from_secs(60));
    (out.status.success(), lossy(&out.stdout), lossy(&out.stderr))
}

#[test]
fn memcached_stores_and_returns_values() {
    let port = free_port();
    let stats = temp_file("memcached.stats");
    let ports = port.to_string();
    let mut args = vec!["-l", "127.0.0.1", "-p", &ports, "-U", "0", "-t", "4"];
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        args.extend(["-u", "nobody"]); // memcached refuses to run as root otherwise
                                       // ...and then writes its stats line as nobody.
        std::fs::write(&stats, "").unwrap();
        std::fs::set_permissions(&stats, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    }
    let mut server = Proc::spawn(demi_run("catnap", &stats, &need("memcached"), &args), "memcached");
    wait_tcp(&mut server, port);
    let servers = format!("--servers=127.0.0.1:{port}");

    // memccp stores a file under its name; memccat prints it back.
    let dir = temp_file("memc-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("greeting.txt");
    let body: String = (0..3000).map(|i| format!("line {i} of a value carried by demi\n")).collect();
    std::fs::write(&file, &body).unwrap();
    let (ok, out, err) = client("memccp", &[servers.clone(), file.display().to_string()]);
    assert!(ok, "memccp: {out}\n{err}");
    let (ok, out, err) = client("memccat", &[servers.clone(), "greeting.txt".into()]);
    assert!(ok, "memccat: {err}");
    // memccat ends each value with a newline of its own (on the kernel too).
    assert!(out == format!("{body}\n"), "memccat returned {} bytes, not the {} stored + 1", out.len(), body.len());

    // memcslap: concurrent sets and gets.
    let (ok, out, err) =
        client("memcslap", &[servers.clone(), "--concurrency=4".into(), "--execute-number=300".into()]);
    assert!(ok, "memcslap: {out}\n{err}");
    assert!(out.contains("Time to"), "memcslap ran: {out}");

    // A kernel client: the text protocol by hand.
    let mut k = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
    k.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    k.write_all(b"set plain 5 0 11\r\nhello world\r\nincr n 1\r\nset n 0 0 1\r\n7\r\nincr n 35\r\nget plain\r\n")
        .unwrap();
    let mut r = BufReader::new(k.try_clone().unwrap());
    let mut lines = Vec::new();
    for _ in 0..7 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        lines.push(l.trim_end().to_string());
    }
    assert_eq!(lines, ["STORED", "NOT_FOUND", "STORED", "42", "VALUE plain 5 11", "hello world", "END"]);
    k.write_all(b"quit\r\n").unwrap();
    drop(k);

    let pid = server.pid();
    server.signal(libc::SIGTERM);
    let (st, out, err) = server.finish(Duration::from_secs(20));
    assert!(st.success() || st.code().is_some(), "memcached exit {st}\n{out}\n{err}");
    let s = stats_of(&stats, pid);
    assert_eq!(s.get("libos"), "catnap");
    assert!(s.get("listening").contains(&format!("127.0.0.1:{port}")), "{:?}", s.0);
    assert!(s.num("accepted") >= 4 && s.num("bytes_in") > body.len() as u64, "{:?}", s.0);
    let _ = std::fs::remove_dir_all(&dir);
}
