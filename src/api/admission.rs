//! Who gets a connection when they are scarce: connections counted per
//! client (an IPv6 client by its /64, which one host holds more of than
//! any cap), and, when every place is taken, the idlest connection that
//! has not authenticated makes room for a new one, so idle sockets can
//! never lock Harbor's deliveries out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The address a client is counted under: an IPv4 address (or an
/// IPv4-mapped IPv6 one) as it is; an IPv6 address by its first
/// `v6_prefix` bits (64 by default: one subnet, which one host or one
/// customer usually holds whole).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// Open connections per client; an entry leaves with its last
/// connection, so the map holds only clients connected now.
#[derive(Default)]
pub(super) struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its client until dropped.
pub(super) struct ClientSlot(Arc<PerClient>, IpAddr);

impl PerClient {
    pub(super) fn enter(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), key))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Set on a connection once one of its requests proved it knows a secret
/// (the webhook's or the API token); handlers find it in the request's
/// extensions.
#[derive(Clone, Default)]
pub struct ConnMark(Arc<AtomicBool>);

impl ConnMark {
    /// This connection authenticated: it is never evicted for another.
    pub fn authenticated(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A connection as the registry of open ones sees it.
struct Tracked {
    /// When it opened, and when it last received a byte (milliseconds
    /// after that: the listener's `Activity` clock).
    opened: tokio::time::Instant,
    last: Arc<AtomicU64>,
    mark: ConnMark,
    close: CancellationToken,
}

impl Tracked {
    /// How long it has been silent, in milliseconds.
    fn silent_ms(&self) -> u64 {
        let open = self.opened.elapsed().as_millis() as u64;
        open.saturating_sub(self.last.load(Ordering::Relaxed))
    }
}

/// Every open connection, for choosing one to close when all places are
/// taken.
#[derive(Default)]
pub(super) struct Conns {
    open: Mutex<HashMap<u64, Tracked>>,
    next: AtomicU64,
}

/// A connection's entry in [`Conns`], removed when dropped.
pub(super) struct Registered {
    conns: Arc<Conns>,
    id: u64,
    /// Cancelled when the connection is chosen to make room.
    pub(super) close: CancellationToken,
    /// Set when it authenticates.
    pub(super) mark: ConnMark,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut m = self.conns.open.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&self.id);
    }
}

impl Conns {
    /// Registers a connection opened at `opened` whose last received byte
    /// `last` counts in milliseconds after that.
    pub(super) fn register(
        self: &Arc<Self>,
        last: Arc<AtomicU64>,
        opened: tokio::time::Instant,
    ) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (close, mark) = (CancellationToken::new(), ConnMark::default());
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Tracked {
                opened,
                last,
                mark: mark.clone(),
                close: close.clone(),
            },
        );
        Registered {
            conns: self.clone(),
            id,
            close,
            mark,
        }
    }

    /// Closes the connection that has been silent longest among those that
    /// never authenticated and are not closing already; false if there is
    /// none.
    pub(super) fn evict_idlest(&self) -> bool {
        let m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let victim = m
            .values()
            .filter(|t| !t.mark.0.load(Ordering::Relaxed) && !t.close.is_cancelled())
            .max_by_key(|t| t.silent_ms());
        match victim {
            Some(t) => {
                t.close.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_counted_and_released() {
        let pc = Arc::new(PerClient::default());
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.1".parse().expect("ip");
        let s1 = pc.enter(a, 2).expect("first");
        let _s2 = pc.enter(a, 2).expect("second");
        assert!(pc.enter(a, 2).is_none(), "third from the same address");
        assert!(pc.enter(b, 2).is_some(), "another address is not affected");
        drop(s1);
        assert!(pc.enter(a, 2).is_some(), "a slot comes back when closed");
    }

    #[test]
    fn the_per_client_map_forgets_addresses_without_connections() {
        let pc = Arc::new(PerClient::default());
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            drop(pc.enter(ip, 1).expect("slot"));
        }
        assert!(pc.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_ipv4_as_they_are() {
        let v6 = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert_eq!(
            client_key(v6("2001:db8:1:2:aaaa::1"), 64),
            v6("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(v6("2001:db8:1:2:aaaa::1"), 64),
            client_key(v6("2001:db8:1:2:ffff:1:2:3"), 64),
            "one /64 is one client"
        );
        assert_ne!(
            client_key(v6("2001:db8:1:2::1"), 64),
            client_key(v6("2001:db8:1:3::1"), 64)
        );
        assert_eq!(client_key(v6("2001:db8::1"), 128), v6("2001:db8::1"));
        assert_eq!(client_key(v6("2001:db8::1"), 0), v6("::"));
        assert_eq!(client_key(v6("192.0.2.7"), 64), v6("192.0.2.7"));
        assert_eq!(client_key(v6("::ffff:192.0.2.7"), 64), v6("192.0.2.7"));
    }

    #[tokio::test]
    async fn the_idlest_unauthenticated_connection_makes_room() {
        let conns = Arc::new(Conns::default());
        let now = tokio::time::Instant::now();
        let quiet = Arc::new(AtomicU64::new(0));
        let busy = Arc::new(AtomicU64::new(0));
        let harbor = Arc::new(AtomicU64::new(0));
        let a = conns.register(quiet.clone(), now);
        let b = conns.register(busy.clone(), now);
        let c = conns.register(harbor.clone(), now);
        c.mark.authenticated();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        busy.store(25, Ordering::Relaxed);
        assert!(conns.evict_idlest());
        assert!(a.close.is_cancelled(), "the quietest goes first");
        assert!(!b.close.is_cancelled() && !c.close.is_cancelled());
        assert!(conns.evict_idlest());
        assert!(b.close.is_cancelled());
        assert!(!conns.evict_idlest(), "an authenticated connection stays");
        assert!(!c.close.is_cancelled());
        drop((a, b, c));
        assert!(conns.open.lock().expect("lock").is_empty());
    }
}
