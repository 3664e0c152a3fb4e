//! `demi devices`: the RDMA devices the kernel shows in sysfs, and the DPDK
//! ports the EAL arguments give.

use crate::{Fail, Res};
use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;

const IB_CLASS: &str = "/sys/class/infiniband";

pub fn run(eal: Option<String>) -> Res<()> {
    rdma(Path::new(IB_CLASS));
    println!();
    let eal = eal.or_else(|| std::env::var("DEMI_DPDK_EAL").ok()).filter(|s| !s.trim().is_empty());
    match eal {
        None => {
            println!("DPDK ports: none probed (DEMI_DPDK_EAL is not set).");
            println!(
                "  Give EAL arguments to see what catnip would get, e.g. (root, no hugepages needed):\n  \
                 demi devices --eal '-l 0 --no-huge --no-pci --no-shconf -m 256 --vdev=net_af_packet0,iface=eth0'"
            );
            Ok(())
        }
        Some(args) => dpdk(&args),
    }
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Directory entries, numeric names in numeric order.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => return Vec::new(),
    };
    v.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    v
}

/// "4: ACTIVE" -> "ACTIVE".
fn strip_code(s: &str) -> &str {
    s.split_once(": ").map(|(_, t)| t).unwrap_or(s)
}

/// A sysfs GID ("fe80:0000:...") as an IPv6 address; None for an empty slot.
fn gid(raw: &str) -> Option<Ipv6Addr> {
    let a: Ipv6Addr = raw.parse().ok()?;
    (!a.is_unspecified()).then_some(a)
}

fn rdma(class: &Path) {
    if !class.exists() {
        println!(
            "no RDMA devices: this kernel has no RDMA (no {IB_CLASS}); \
             run under rxe-setup/rxe-run for two soft-RoCE devices"
        );
        return;
    }
    let devs = entries(class);
    if devs.is_empty() {
        println!(
            "no RDMA devices: {IB_CLASS} is empty (no RDMA NIC and no soft-RoCE link; \
             `rdma link add rxe0 type rxe netdev <netdev>` makes one, or use rxe-setup/rxe-run)"
        );
        return;
    }
    println!("RDMA devices ({}):", devs.len());
    for dev in devs {
        let d = class.join(&dev);
        let node = read(&d.join("node_type")).map(|s| strip_code(&s).to_string()).unwrap_or_else(|| "?".into());
        let parent = read(&d.join("parent")).map(|p| format!(", parent netdev {p}")).unwrap_or_default();
        println!("  {dev}: {node}{parent}");
        for port in entries(&d.join("ports")) {
            let p = d.join("ports").join(&port);
            let state = read(&p.join("state")).map(|s| strip_code(&s).to_string()).unwrap_or_else(|| "?".into());
            let phys = read(&p.join("phys_state")).map(|s| strip_code(&s).to_string()).unwrap_or_else(|| "?".into());
            let layer = read(&p.join("link_layer")).unwrap_or_else(|| "?".into());
            let rate = read(&p.join("rate")).map(|r| format!(", {r}")).unwrap_or_default();
            let mut gids = Vec::new();
            let mut netdevs: Vec<String> = Vec::new();
            for i in entries(&p.join("gids")) {
                let Some(g) = read(&p.join("gids").join(&i)).as_deref().and_then(gid) else { continue };
                let ty = read(&p.join("gid_attrs/types").join(&i)).unwrap_or_default();
                let nd = read(&p.join("gid_attrs/ndevs").join(&i)).unwrap_or_default();
                if !nd.is_empty() && !netdevs.contains(&nd) {
                    netdevs.push(nd.clone());
                }
                gids.push((i, g, ty, nd));
            }
            let on = if netdevs.is_empty() { String::new() } else { format!(", on {}", netdevs.join(", ")) };
            println!("    port {port}: {state} ({phys}), link layer {layer}{rate}{on}");
            if gids.is_empty() {
                println!("      no GIDs");
            }
            for (i, g, ty, nd) in gids {
                let ty = if ty.is_empty() { String::new() } else { format!("  {ty}") };
                let nd = if nd.is_empty() { String::new() } else { format!("  {nd}") };
                println!("      gid[{i}] {g}{ty}{nd}");
            }
        }
    }
}

#[cfg(feature = "catnip")]
fn dpdk(args: &str) -> Res<()> {
    use catnip::sys;
    let list: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    sys::eal_init(&list).map_err(|e| Fail::new(format!("DPDK's EAL did not start with {args:?}: {e}")))?;
    let mut ports = Vec::new();
    let mut from = 0u16;
    while let Some(p) = sys::find_port(from) {
        ports.push(p);
        match p.0.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    if ports.is_empty() {
        println!("DPDK ports: none (the EAL probed no port: add a --vdev, or bind a NIC to vfio-pci)");
        return Ok(());
    }
    println!("DPDK ports ({}), from DEMI_DPDK_EAL={args:?}:", ports.len());
    for p in ports {
        let info = p.info().map_err(|e| Fail::new(format!("port {}: {e}", p.0)))?;
        let mac = p
            .mac()
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
            .unwrap_or_else(|_| "?".into());
        let link = if p.link_up() { "up" } else { "down (catnip starts the port)" };
        println!(
            "  port {}: {}, MAC {mac}, max MTU {}, link {link}, IPv4 checksum offload rx {} tx {}",
            p.0,
            info.driver,
            info.max_mtu,
            if info.rx_ipv4_cksum { "yes" } else { "no" },
            if info.tx_ipv4_cksum { "yes" } else { "no" }
        );
    }
    Ok(())
}

#[cfg(not(feature = "catnip"))]
fn dpdk(_: &str) -> Res<()> {
    Err(Fail::new("this demi is built without catnip (cargo feature `catnip`): it cannot probe DPDK ports"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_and_states_parse() {
        assert_eq!(gid("0000:0000:0000:0000:0000:ffff:0a4d:0001").unwrap().to_string(), "::ffff:10.77.0.1");
        assert_eq!(gid("fe80:0000:0000:0000:b0dc:4bff:fe11:2233").unwrap().to_string(), "fe80::b0dc:4bff:fe11:2233");
        assert!(gid("0000:0000:0000:0000:0000:0000:0000:0000").is_none());
        assert_eq!(strip_code("4: ACTIVE"), "ACTIVE");
        assert_eq!(strip_code("Ethernet"), "Ethernet");
    }
}
