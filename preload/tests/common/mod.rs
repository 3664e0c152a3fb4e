//! Shared by the preload tests: where the built pieces are, free loopback
//! ports, child processes that are killed (by pid) on every exit path, and
//! the DEMI_PRELOAD_STATS lines that prove demi carried the traffic.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// target/release (or target/debug): this test binary lives in its deps/.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The preload library; building it is `make build`'s job (cargo builds it
/// for this package's tests as well).
pub fn lib() -> PathBuf {
    let p = target_dir().join("libdemi_preload.so");
    assert!(p.is_file(), "{} is missing: run `make build` (cargo build --release -p demi-preload)", p.display());
    p
}

/// The demi command (for `demi run`).
pub fn demi() -> PathBuf {
    let p = target_dir().join("demi");
    assert!(p.is_file(), "{} is missing: run `make build` (it builds the demi command)", p.display());
    p
}

/// The path of a program the tests need. A missing one fails the test
/// loudly: `make deps` (scripts/install-deps) installs them.
pub fn need(prog: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/bin", "/sbin"]) {
        let p = Path::new(dir).join(prog);
        if p.is_file() {
            return p;
        }
    }
    panic!("{prog} is not installed: run `make deps` (it installs redis-server, redis-tools, memcached, libmemcached-tools and sockperf)");
}

/// A loopback port free for TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind a probe");
        let port = tcp.local_addr().expect("probe address").port();
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// A fresh file name under the test's temporary directory.
pub fn temp_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preload");
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let p = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// `demi run --libos LIBOS --stats STATS -- prog args...`, ready to spawn.
pub fn demi_run(libos: &str, stats: &Path, prog: &Path, args: &[&str]) -> Command {
    demi_run_with(libos, stats, &[], prog, args)
}

/// As [`demi_run`], with more `demi run` options before the `--`.
pub fn demi_run_with(libos: &str, stats: &Path, opts: &[&str], prog: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(demi());
    c.args(["run", "--libos", libos, "--preload"])
        .arg(lib())
        .arg("--stats")
        .arg(stats)
        .args(opts)
        .arg("--")
        .arg(prog)
        .args(args)
        .env_remove("DEMI_PRELOAD_LOG")
        .env_remove("LD_PRELOAD");
    c
}

/// A child process killed by its pid when dropped (test failure included).
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    out: PathBuf,
    err: PathBuf,
}

static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Proc {
    /// Starts `cmd`; its output goes to files (a pipe nobody reads until
    /// the end would stall a chatty server).
    pub fn spawn(mut cmd: Command, name: &str) -> Proc {
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (out, err) = (temp_file(&format!("{name}-{n}.out")), temp_file(&format!("{name}-{n}.err")));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child: Some(child), name: name.to_string(), out, err }
    }

    /// What it printed so far (stdout, stderr).
    pub fn output(&self) -> (String, String) {
        (std::fs::read_to_string(&self.out).unwrap_or_default(), std::fs::read_to_string(&self.err).unwrap_or_default())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig` to the process (by pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `limit` for the exit; kills it (SIGKILL) if it overruns
    /// and panics. Returns the status and everything it printed.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                let (out, err) = self.output();
                return (st, out, err);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let (out, err) = self.output();
                panic!("{} did not exit within {limit:?}\nstdout:\n{out}\nstderr:\n{err}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test (with the output) if the process already exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(st) = child.try_wait().expect("try_wait") {
            self.child = None;
            let (out, err) = self.output();
            panic!("{} exited early ({st})\nstdout:\n{out}\nstderr:\n{err}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command to completion within `limit` (killed by pid beyond it).
pub fn run(cmd: Command, name: &str, limit: Duration) -> Output {
    let p = Proc::spawn(cmd, name);
    let (status, stdout, stderr) = p.finish(limit);
    Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() }
}

/// Waits until something accepts TCP connections on 127.0.0.1:port.
pub fn wait_tcp(server: &mut Proc, port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        server.assert_running();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
        if TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} does not accept connections on port {port} after 20 s", server.name);
}

/// One DEMI_PRELOAD_STATS line, as key -> value.
pub struct Stats(pub std::collections::HashMap<String, String>);

impl Stats {
    pub fn num(&self, key: &str) -> u64 {
        self.0.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number {key} in {:?}", self.0))
    }
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The stats line process `pid` wrote at exit to `file`.
pub fn stats_of(file: &Path, pid: i32) -> Stats {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("no stats file {} ({e}): did the program exit normally?", file.display()));
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("pid={pid} ")))
        .unwrap_or_else(|| panic!("no stats line for pid {pid} in:\n{text}"));
    Stats(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// User+system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after "state".
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
