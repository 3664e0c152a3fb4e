//! The ARP cache (entries expire) and address resolution in progress
//! (frames wait while requests are retried; after the last retry they fail).

use crate::wire::EthernetAddress;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Frames that may wait for one address; more fail at once with ENOBUFS.
pub const MAX_WAITING_PER_ADDR: usize = 64;
/// Cache size bound; when full, expired entries go first, then any one.
const MAX_ENTRIES: usize = 4096;

/// One address being resolved.
#[derive(Debug)]
pub struct Resolution<W> {
    /// Frames to send once the address is known (destination MAC unset).
    pub frames: Vec<W>,
    /// Requests sent so far.
    pub tries: u32,
    /// When to send the next request (or give up).
    pub next_try: Instant,
}

/// What parking a frame did.
#[derive(Debug)]
pub enum Parked<W> {
    /// A new resolution started: send a request now.
    NewResolution,
    /// The frame joined a resolution under way.
    Joined,
    /// Too many frames wait for this address: the frame comes back.
    Full(W),
}

/// The cache and the resolutions under way; `W` is what waits (a frame).
#[derive(Debug)]
pub struct ArpCache<W> {
    entries: HashMap<Ipv4Addr, (EthernetAddress, Instant)>,
    pending: HashMap<Ipv4Addr, Resolution<W>>,
    ttl: Duration,
    retry: Duration,
    retries: u32,
}

impl<W> ArpCache<W> {
    /// `ttl`: how long an entry is trusted; `retry`: time between requests;
    /// `retries`: requests before giving up.
    pub fn new(ttl: Duration, retry: Duration, retries: u32) -> ArpCache<W> {
        ArpCache { entries: HashMap::new(), pending: HashMap::new(), ttl, retry, retries: retries.max(1) }
    }

    /// The MAC for `ip` if known and not expired (expired entries go).
    pub fn lookup(&mut self, ip: Ipv4Addr, now: Instant) -> Option<EthernetAddress> {
        match self.entries.get(&ip) {
            Some(&(mac, expires)) if now < expires => Some(mac),
            Some(_) => {
                self.entries.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Records `ip` at `mac`; returns the frames that waited for it.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> Option<Resolution<W>> {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&ip) {
            self.entries.retain(|_, (_, exp)| now < *exp);
            if self.entries.len() >= MAX_ENTRIES {
                let victim = *self.entries.keys().next().expect("cache is full, so not empty");
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(ip, (mac, now + self.ttl));
        self.pending.remove(&ip)
    }

    /// RFC 826's merge step: refresh `ip` only if we already know or want it.
    pub fn refresh(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> Option<Resolution<W>> {
        if self.entries.contains_key(&ip) || self.pending.contains_key(&ip) {
            self.learn(ip, mac, now)
        } else {
            None
        }
    }

    /// Parks a frame until `ip` resolves.
    pub fn park(&mut self, ip: Ipv4Addr, frame: W, now: Instant) -> Parked<W> {
        match self.pending.get_mut(&ip) {
            Some(r) if r.frames.len() >= MAX_WAITING_PER_ADDR => Parked::Full(frame),
            Some(r) => {
                r.frames.push(frame);
                Parked::Joined
            }
            None => {
                self.pending.insert(ip, Resolution { frames: vec![frame], tries: 1, next_try: now + self.retry });
                Parked::NewResolution
            }
        }
    }

    /// True while some address is being resolved.
    pub fn resolving(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Runs the retry timers: addresses to ask again go to `retry`, and
    /// resolutions that ran out of tries are removed into `failed`.
    pub fn expire(&mut self, now: Instant, retry: &mut Vec<Ipv4Addr>, failed: &mut Vec<Resolution<W>>) {
        let (limit, interval) = (self.retries, self.retry);
        let mut gone = Vec::new();
        for (ip, r) in self.pending.iter_mut() {
            if now < r.next_try {
                continue;
            }
            if r.tries >= limit {
                gone.push(*ip);
            } else {
                r.tries += 1;
                r.next_try = now + interval;
                retry.push(*ip);
            }
        }
        for ip in gone {
            failed.extend(self.pending.remove(&ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    #[test]
    fn entries_expire() {
        let t0 = Instant::now();
        let mut c = ArpCache::<u32>::new(Duration::from_secs(10), Duration::from_secs(1), 3);
        assert!(c.lookup(IP, t0).is_none());
        assert!(c.learn(IP, MAC, t0).is_none());
        assert_eq!(c.lookup(IP, t0 + Duration::from_secs(9)), Some(MAC));
        assert_eq!(c.lookup(IP, t0 + Duration::from_secs(10)), None);
        assert_eq!(c.lookup(IP, t0), None, "an expired entry is removed");
    }

    #[test]
    fn refresh_only_touches_known_or_wanted_addresses() {
        let t0 = Instant::now();
        let mut c = ArpCache::<u32>::new(Duration::from_secs(10), Duration::from_secs(1), 3);
        assert!(c.refresh(IP, MAC, t0).is_none());
        assert!(c.lookup(IP, t0).is_none());
        c.learn(IP, MAC, t0);
        let other = EthernetAddress([2, 0, 0, 0, 0, 9]);
        c.refresh(IP, other, t0);
        assert_eq!(c.lookup(IP, t0), Some(other));
    }

    #[test]
    fn resolution_retries_then_fails_with_its_frames() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = ArpCache::new(Duration::from_secs(10), ms(100), 3);
        assert!(matches!(c.park(IP, 1u32, t0), Parked::NewResolution));
        assert!(matches!(c.park(IP, 2u32, t0), Parked::Joined));
        let (mut retry, mut failed) = (Vec::new(), Vec::new());
        c.expire(t0 + ms(50), &mut retry, &mut failed);
        assert!(retry.is_empty() && failed.is_empty(), "not due yet");
        c.expire(t0 + ms(100), &mut retry, &mut failed);
        c.expire(t0 + ms(200), &mut retry, &mut failed);
        assert_eq!(retry, [IP, IP], "tries 2 and 3");
        assert!(failed.is_empty());
        c.expire(t0 + ms(300), &mut retry, &mut failed);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].frames, [1, 2]);
        assert!(!c.resolving());
    }

    #[test]
    fn learning_releases_waiting_frames_and_bounds_the_queue() {
        let t0 = Instant::now();
        let mut c = ArpCache::new(Duration::from_secs(10), Duration::from_secs(1), 3);
        for i in 0..MAX_WAITING_PER_ADDR as u32 {
            assert!(!matches!(c.park(IP, i, t0), Parked::Full(_)));
        }
        assert!(matches!(c.park(IP, 999, t0), Parked::Full(999)));
        let r = c.learn(IP, MAC, t0).expect("frames waited");
        assert_eq!(r.frames.len(), MAX_WAITING_PER_ADDR);
        assert!(!c.resolving());
    }
}
