//! The per-thread model (`Threading::PerThread`): each thread's sockets live
//! in its own engine, data stays intact under several threads, and every
//! cross-thread use works — a descriptor, a token or a buffer handed to
//! another thread — or fails with the documented errno.

use demi::config::{Config, Threading};
use demi::engine::{self, Engine};
use demi::loopback::Loopback;
use demi::{LibOs, QDesc, QToken, QValue, SockType};
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Engines over the in-memory loopback device, one per thread.
fn loopback_engines() -> LibOs {
    LibOs::with_engines(|i| Ok(Engine::with_shard(Box::new(Loopback::new()), i)), Duration::ZERO, Duration::ZERO)
        .expect("loopback engines")
}

fn catnap() -> LibOs {
    let cfg = Config { spin: Duration::ZERO, ..Config::new("catnap") };
    assert_eq!(cfg.threading, Threading::PerThread, "per-thread engines are the default");
    LibOs::with_config(&cfg).expect("catnap starts")
}

fn done(os: &LibOs, qt: QToken) -> QValue {
    let r = os.wait(qt, Some(Duration::from_secs(10))).expect("operation finishes");
    assert_eq!(r.errno(), 0, "operation failed: {:?}", r.value);
    r.value
}

/// A datagram socket bound to `at` and connected to itself.
fn self_connected(os: &LibOs, at: &str) -> QDesc {
    let qd = os.socket(SockType::Datagram).unwrap();
    let at: SocketAddrV4 = at.parse().unwrap();
    os.bind(qd, at).unwrap();
    done(os, os.connect(qd, at).unwrap());
    qd
}

/// A message that says who sent it and which it is, with a checksum.
fn stamp(thread: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&thread.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend((0..52u32).map(|i| (thread * 31 + seq * 7 + i) as u8));
    let sum: u32 = m.iter().map(|&b| b as u32).sum();
    m.extend_from_slice(&sum.to_le_bytes());
    m
}

fn popped(v: QValue) -> Vec<u8> {
    match v {
        QValue::Pop { buf, .. } => buf.as_slice().to_vec(),
        v => panic!("pop gave {v:?}"),
    }
}

#[test]
fn each_thread_gets_its_own_engine_and_data_stays_intact() {
    let os = loopback_engines();
    const THREADS: u32 = 4;
    const MSGS: u32 = 2000;
    let start = Arc::new(Barrier::new(THREADS as usize));
    let shards: Vec<usize> = (0..THREADS)
        .map(|t| {
            let (os, start) = (os.clone(), start.clone());
            std::thread::spawn(move || {
                let qd = self_connected(&os, &format!("10.0.0.{}:7", t + 1));
                start.wait();
                for seq in 0..MSGS {
                    let msg = stamp(t, seq);
                    done(&os, os.push(qd, &os.buffer_from(&msg).unwrap()).unwrap());
                    assert_eq!(popped(done(&os, os.pop(qd).unwrap())), msg, "thread {t} message {seq}");
                }
                os.close(qd).unwrap();
                engine::shard_of_qd(qd)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread passed"))
        .collect();
    let mut distinct = shards.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), THREADS as usize, "threads that ran at once share engines: {shards:?}");
    // Shard 0 was the main thread's (made at start, idle here).
    assert!(!shards.contains(&0), "{shards:?}");
    assert_eq!(os.engines(), THREADS as usize + 1);
}

#[test]
fn an_exited_threads_engine_goes_to_the_next_thread() {
    let os = loopback_engines();
    for t in 0..40 {
        let os2 = os.clone();
        std::thread::spawn(move || {
            let qd = self_connected(&os2, &format!("10.0.1.{}:7", t + 1));
            os2.close(qd).unwrap();
        })
        .join()
        .unwrap();
    }
    // The main thread's engine and one passed from thread to thread.
    assert_eq!(os.engines(), 2, "an engine per exited thread");
}

#[test]
fn descriptors_and_tokens_work_from_another_thread() {
    let os = loopback_engines();
    let (qd, pending) = {
        let os = os.clone();
        std::thread::spawn(move || {
            let qd = self_connected(&os, "10.0.2.1:7");
            // Left pending for the other thread to wait for.
            let qt = os.pop(qd).unwrap();
            (qd, qt)
        })
        .join()
        .unwrap()
    };
    assert_ne!(engine::shard_of_qd(qd), 0, "the socket is not the main thread's");
    // The owner is gone; its engine (and socket) are not.
    let msg = stamp(9, 1);
    let push = os.push(qd, &os.buffer_from(&msg).unwrap()).unwrap();
    // The main thread used the other engine: wait_next_n sees its work.
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < until {
        got.extend(os.wait_next_n(8, Some(Duration::from_secs(1))).unwrap_or_default());
    }
    let mut tokens: Vec<QToken> = got.iter().map(|r| r.qt).collect();
    tokens.sort();
    let mut want = vec![push, pending];
    want.sort();
    assert_eq!(tokens, want, "wait_next_n saw the other engine's completions");
    let pop = got.into_iter().find(|r| r.qt == pending).unwrap();
    assert_eq!(popped(pop.value), msg);
    os.close(qd).unwrap();
    assert_eq!(os.push(qd, &os.buffer_from(&msg).unwrap()).unwrap_err().errno(), libc::EBADF);
}

#[test]
fn numbers_of_engines_that_do_not_exist_are_refused() {
    let os = loopback_engines();
    let qd = self_connected(&os, "10.0.3.1:7");
    let forged_qd = qd | (77 << engine::SHARD_SHIFT);
    assert_eq!(os.pop(forged_qd).unwrap_err().errno(), libc::EBADF);
    assert_eq!(os.close(forged_qd).unwrap_err().errno(), libc::EBADF);
    assert_eq!(os.pop(-1).unwrap_err().errno(), libc::EBADF);
    let push = os.push(qd, &os.buffer_from(b"x").unwrap()).unwrap();
    let forged_qt = push | (77 << engine::SHARD_SHIFT);
    assert_eq!(os.wait(forged_qt, Some(Duration::ZERO)).unwrap_err().errno(), libc::EINVAL);
    // In order: a finished token before a forged one is returned; a forged
    // one first is refused, and leaves the finished one in place.
    assert_eq!(os.wait_any(&[forged_qt, push], Some(Duration::ZERO)).unwrap_err().errno(), libc::EINVAL);
    let (i, r) = os.wait_any(&[push, forged_qt], Some(Duration::ZERO)).unwrap();
    assert_eq!((i, r.qt), (0, push));
}

#[test]
fn wait_any_sleeps_on_several_engines() {
    let os = catnap();
    // Two threads' sockets (alive at once: two engines), each with a pop pending.
    let both = Arc::new(Barrier::new(2));
    let socks: Vec<(QDesc, SocketAddrV4, QToken)> = (0..2)
        .map(|_| {
            let (os, both) = (os.clone(), both.clone());
            std::thread::spawn(move || {
                let qd = os.socket(SockType::Datagram).unwrap();
                os.bind(qd, "127.0.0.1:0".parse().unwrap()).unwrap();
                let at = os.local_addr(qd).unwrap().expect("bound");
                let qt = os.pop(qd).unwrap();
                both.wait();
                (qd, at, qt)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_ne!(engine::shard_of_qd(socks[0].0), engine::shard_of_qd(socks[1].0));
    let to = socks[1].1;
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"wake", to).unwrap();
    });
    let t0 = Instant::now();
    let (i, r) = os.wait_any(&[socks[0].2, socks[1].2], Some(Duration::from_secs(10))).unwrap();
    sender.join().unwrap();
    assert_eq!(i, 1);
    assert_eq!(popped(r.value), b"wake");
    assert!(t0.elapsed() < Duration::from_secs(5), "woke late: {:?}", t0.elapsed());
    assert_eq!(os.wait(socks[0].2, Some(Duration::from_millis(50))).unwrap_err().errno(), libc::ETIMEDOUT);
}

#[test]
fn catnap_threads_echo_over_their_own_sockets() {
    let os = catnap();
    const THREADS: u32 = 3;
    const MSGS: u32 = 500;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let os = os.clone();
            std::thread::spawn(move || {
                let l = os.socket(SockType::Stream).unwrap();
                os.bind(l, "127.0.0.1:0".parse().unwrap()).unwrap();
                os.listen(l, 4).unwrap();
                let at = os.local_addr(l).unwrap().unwrap();
                let c = os.socket(SockType::Stream).unwrap();
                let acc = os.accept(l).unwrap();
                done(&os, os.connect(c, at).unwrap());
                let QValue::Accept { qd: s, .. } = done(&os, acc) else { panic!("accept") };
                for seq in 0..MSGS {
                    let msg = stamp(t, seq);
                    done(&os, os.push(c, &os.buffer_from(&msg).unwrap()).unwrap());
                    let mut got = Vec::new();
                    while got.len() < msg.len() {
                        got.extend(popped(done(&os, os.pop(s).unwrap())));
                    }
                    assert_eq!(got, msg, "thread {t} message {seq}");
                }
                for qd in [c, s, l] {
                    os.close(qd).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread passed");
    }
}

#[test]
fn buffers_lent_by_one_engine_push_on_another() {
    let os = loopback_engines();
    let buf = std::thread::spawn({
        let os = os.clone();
        move || os.buffer_from(&stamp(1, 1)).unwrap()
    })
    .join()
    .unwrap();
    let qd = self_connected(&os, "10.0.4.1:7");
    done(&os, os.push(qd, &buf).unwrap());
    assert_eq!(popped(done(&os, os.pop(qd).unwrap())), stamp(1, 1));
}

#[test]
fn shared_threading_keeps_one_engine() {
    let os = LibOs::with_config(&Config { threading: Threading::Shared, ..Config::new("catnap") }).unwrap();
    let qds: Vec<QDesc> = (0..3)
        .map(|_| {
            let os = os.clone();
            std::thread::spawn(move || os.socket(SockType::Datagram).unwrap()).join().unwrap()
        })
        .collect();
    assert!(qds.iter().all(|&qd| engine::shard_of_qd(qd) == 0), "{qds:?}");
    assert_eq!(os.engines(), 1);
}

#[test]
fn an_engine_made_for_the_wrong_shard_is_refused() {
    // Engine::new is shard 0's: right for the first engine only.
    let os = LibOs::with_engines(|_| Ok(Engine::new(Box::new(Loopback::new()))), Duration::ZERO, Duration::ZERO)
        .expect("shard 0 is fine");
    let os2 = os.clone();
    let e = std::thread::spawn(move || os2.socket(SockType::Datagram).unwrap_err()).join().unwrap();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.why().contains("Engine::with_shard"), "{}", e.why());
}

/// A thread that holds a socket (and so an engine) until stopped.
struct Holder {
    shard: usize,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Holder {
    fn start(os: &LibOs, at: &'static str) -> Holder {
        let (os, (tx, rx), (stop, stopped)) = (os.clone(), std::sync::mpsc::channel(), std::sync::mpsc::channel());
        let thread = std::thread::spawn(move || {
            tx.send(engine::shard_of_qd(self_connected(&os, at))).unwrap();
            let _ = stopped.recv();
        });
        Holder { shard: rx.recv().unwrap(), stop, thread }
    }

    fn stop(self) {
        self.stop.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

#[test]
fn with_every_engine_taken_an_exited_threads_engine_is_still_handed_on() {
    let os = loopback_engines();
    let n = engine::MAX_SHARDS - 1;
    let all = Arc::new(Barrier::new(n));
    let held: Vec<usize> = (0..n)
        .map(|t| {
            let (os, all) = (os.clone(), all.clone());
            std::thread::spawn(move || {
                let qd = self_connected(&os, &format!("10.1.{}.{}:7", t / 200, t % 200 + 1));
                all.wait();
                os.close(qd).unwrap();
                engine::shard_of_qd(qd)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(os.engines(), engine::MAX_SHARDS, "every engine made: {held:?}");
    // X and Y take an engine each; X exits while Y holds its; Z then gets
    // X's (handed on, not shared: sharing would give a third number).
    let x = Holder::start(&os, "10.2.0.1:7");
    let y = Holder::start(&os, "10.2.0.2:7");
    let (xs, ys) = (x.shard, y.shard);
    x.stop();
    let z = Holder::start(&os, "10.2.0.3:7");
    let zs = z.shard;
    z.stop();
    y.stop();
    assert!(held.contains(&xs) && held.contains(&ys) && xs != ys, "{xs} {ys}");
    assert_eq!(zs, xs, "the engine X left went to Z");
    assert_eq!(os.engines(), engine::MAX_SHARDS);
}

#[test]
fn a_thread_that_only_waits_sees_every_engines_results() {
    let os = loopback_engines();
    let (qd, pop) = {
        let os = os.clone();
        std::thread::spawn(move || {
            let qd = self_connected(&os, "10.0.5.1:7");
            let pop = os.pop(qd).unwrap();
            // Left for whoever waits for it.
            os.push(qd, &os.buffer_from(&stamp(5, 5)).unwrap()).unwrap();
            (qd, pop)
        })
        .join()
        .unwrap()
    };
    let os2 = os.clone();
    let got = std::thread::spawn(move || {
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < until {
            got.extend(os2.wait_next_n(8, Some(Duration::from_millis(500))).unwrap_or_default());
        }
        got
    })
    .join()
    .unwrap();
    assert_eq!(got.len(), 2, "the push and the pop of the other thread's socket");
    let r = got.into_iter().find(|r| r.qt == pop).expect("the pop");
    assert_eq!((r.qd, popped(r.value)), (qd, stamp(5, 5)));
}
