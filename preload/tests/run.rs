//! `demi run` itself, and a libOS that cannot start: the program fails at
//! its first socket call with a clear line on stderr, nothing on stdout,
//! no crash; programs that never open an AF_INET socket are untouched.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_libos_that_cannot_start_fails_the_first_socket_call() {
    // catnip without DPDK arguments cannot start, on any machine.
    let stats = temp_file("nostart.stats");
    let port = free_port().to_string();
    let mut cmd = demi_run("catnip", &stats, &need("redis-cli"), &["-p", &port, "ping"]);
    cmd.env_remove("DEMI_DPDK_EAL").env_remove("DEMI_LOCAL_IPV4");
    let out = run(cmd, "redis-cli", Duration::from_secs(30));
    let (so, se) = (lossy(&out.stdout), lossy(&out.stderr));
    assert!(!out.status.success(), "the program fails: {so}\n{se}");
    assert!(out.status.code().is_some(), "an exit, not a signal (no crash): {:?}", out.status);
    assert!(se.contains("demi preload: cannot start the catnip libOS"), "the reason on stderr:\n{se}");
    assert!(se.contains("DEMI_PRELOAD_LOG"), "says how to learn more:\n{se}");
    assert!(!so.contains("demi"), "nothing of ours on stdout:\n{so}");
}

#[test]
fn programs_without_inet_sockets_pass_through() {
    let stats = temp_file("passthrough.stats");
    // A pipeline of files and pipes only: the output is the kernel's.
    let out = run(
        demi_run(
            "catnap",
            &stats,
            &need("sh"),
            &["-c", "printf 'a\\nb\\nc\\n' | sort -r | tr -d '\\n'; ls / > /dev/null"],
        ),
        "sh",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    assert_eq!(lossy(&out.stdout), "cba");
    assert_eq!(lossy(&out.stderr), "", "nothing on stderr either");
    assert!(!stats.exists() || std::fs::read_to_string(&stats).unwrap().is_empty(), "no libOS was started");
}

#[test]
fn demi_run_reports_what_it_cannot_do() {
    let out = Command::new(demi()).args(["run", "--", "/nonexistent/program"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(lossy(&out.stderr).contains("cannot run /nonexistent/program"), "{}", lossy(&out.stderr));
    let out = Command::new(demi()).args(["run", "--preload", "/nonexistent.so", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(lossy(&out.stderr).contains("/nonexistent.so does not exist"), "{}", lossy(&out.stderr));
    let out = Command::new(demi()).args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error: {}", lossy(&out.stderr));
    // The exit status is the program's (demi execs it).
    let stats = temp_file("status.stats");
    let out = run(demi_run("catnap", &stats, &need("sh"), &["-c", "exit 7"]), "sh", Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(7));
}
