//! From a D-Bus message to an event: which messages are op-dbus's own
//! (never recorded), the filter rules, the plugin id (the sender's
//! well-known name, tracked from `NameOwnerChanged` in bus order), the
//! operation, and the body decoded with its signature kept (FORMAT.md,
//! "What each source puts in a footprint"). Gaps become `internal`
//! records (`org.opdbus.Gap`). Pure: no bus connection, no I/O; the
//! DbusIngest actor feeds it what the capture queued and looks up the
//! credentials it asks for.

use super::capture::{Captured, Gap};
use super::names::{CredsCache, Names};
use super::rules::{Filter, Kind, Meta};
use super::{OwnNames, SERVICE_NAME};
use crate::codec::dbus::{header_signature, BodyDecoder, WireError};
use crate::codec::{Source, Value};
use crate::messages::RawEvent;
use crate::metrics as m;

/// Nesting accepted in a body. dbus-daemon forwards up to 64 nested
/// variants inside 32 arrays and 32 structs; each level counts once here.
const MAX_DEPTH: usize = 160;
/// Memory a body's decoding may take, as a multiple of `max_data_bytes`.
const DECODE_BUDGET_FACTOR: usize = 8;

/// Maps what the capture queued, keeping the bus's names in bus order.
pub struct Mapper {
    filter: Filter,
    own: OwnNames,
    names: Names,
    /// The unique names of the capture's connections, as of the last
    /// `Connected` item processed.
    capture_own: Vec<String>,
    decoder: BodyDecoder,
    /// The bus's address, as gap records name it.
    bus: String,
    /// `input.max_data_bytes`: bodies above it are stored raw (and then
    /// truncated); decoding is bounded to a multiple of it.
    max_data_bytes: usize,
    joined: Vec<String>,
    left: Vec<String>,
}

/// What one round of captured items became.
pub struct Round {
    /// The events to record, credentials filled in from the cache.
    pub(crate) events: Vec<RawEvent>,
    /// Unique names that joined the bus this round: looked up at once, so
    /// that a short-lived sender is still there when asked.
    pub(crate) joined: Vec<String>,
    /// Unique names that left this round: not to be cached.
    pub(crate) left: Vec<String>,
    /// The capture's new resolver connection, if it reconnected.
    pub(crate) resolver: Option<zbus::Connection>,
}

impl Mapper {
    pub fn new(filter: Filter, own: OwnNames, bus: String, max_data_bytes: usize) -> Self {
        Mapper {
            filter,
            own,
            names: Names::new(),
            capture_own: Vec::new(),
            decoder: BodyDecoder::new(),
            bus,
            max_data_bytes,
            joined: Vec::new(),
            left: Vec::new(),
        }
    }

    /// The bus's address, as gap records name it.
    pub fn bus(&self) -> &str {
        &self.bus
    }
}

impl Mapper {
    /// Applies control items and name changes in order; returns the events
    /// to record (credentials filled in later).
    pub fn map_items(&mut self, items: Vec<Captured>, creds: &CredsCache) -> Round {
        // The service's name from the registry (its connection comes and
        // goes on its own), the capture's own names in bus order.
        let mut own = self.own.snapshot();
        own.extend(self.capture_own.iter().cloned());
        let mut out = Vec::with_capacity(items.len());
        let mut resolver = None;
        let (mut filtered, mut recorded) = (0u64, 0u64);
        for item in items {
            match item {
                Captured::Connected { names, resolver: r, own: capture_own } => {
                    self.names = *names;
                    resolver = Some(r);
                    own.retain(|n| !self.capture_own.contains(n));
                    own.extend(capture_own.iter().cloned());
                    self.capture_own = capture_own;
                }
                Captured::Gap(g) => out.push(gap_event(&g, &self.bus)),
                Captured::Message { msg, captured_ns } => match self.map_message(&msg, captured_ns, &own, creds) {
                    Some(e) => {
                        recorded += 1;
                        out.push(e)
                    }
                    None => filtered += 1,
                },
            }
        }
        metrics::counter!(m::BUS_RECORDED).increment(recorded);
        metrics::counter!(m::BUS_FILTERED).increment(filtered);
        Round { events: out, joined: std::mem::take(&mut self.joined), left: std::mem::take(&mut self.left), resolver }
    }

    /// One message as an event, or `None` when it is op-dbus's own or the
    /// rules leave it out. Every `NameOwnerChanged` updates the names
    /// first, recorded or not.
    pub fn map_message(
        &mut self,
        msg: &zbus::Message,
        captured_ns: i64,
        own: &[String],
        creds: &CredsCache,
    ) -> Option<RawEvent> {
        let h = msg.header();
        let kind = match h.message_type() {
            zbus::message::Type::MethodCall => Kind::MethodCall,
            zbus::message::Type::MethodReturn => Kind::MethodReturn,
            zbus::message::Type::Error => Kind::Error,
            zbus::message::Type::Signal => Kind::Signal,
        };
        let sender = h.sender().map(|s| s.as_str());
        let interface = h.interface().map(|s| s.as_str());
        let member = h.member().map(|s| s.as_str());
        let bytes = msg.data().bytes();
        let (big_endian, signature) = header_signature(bytes).unwrap_or((false, ""));
        let body = msg.body();
        let body_bytes: &[u8] = body.data();

        // Names first, for every NameOwnerChanged, recorded or not.
        if kind == Kind::Signal
            && sender == Some("org.freedesktop.DBus")
            && interface == Some("org.freedesktop.DBus")
            && member == Some("NameOwnerChanged")
            && signature == "sss"
        {
            if let Ok(Value::Array(a)) = self.decoder.decode(body_bytes, "sss", big_endian, 4) {
                if let [Value::Str(n), Value::Str(old), Value::Str(new)] = a.as_slice() {
                    if n.starts_with(':') && old.is_empty() {
                        self.joined.push(n.clone());
                    } else if n.starts_with(':') && new.is_empty() {
                        self.left.push(n.clone());
                    }
                    self.names.owner_changed(n, old, new);
                }
            }
        }

        // op-dbus's own traffic: from or to its connections, or to its name.
        let dest = h.destination().map(|d| d.as_str());
        let is_own = |n: Option<&str>| n.is_some_and(|n| n == SERVICE_NAME || own.iter().any(|o| o == n));
        if is_own(sender) || is_own(dest) {
            return None;
        }

        let path = h.path().map(|p| p.as_str());
        let names = sender.map(|s| self.names.names_of(s)).unwrap_or(&[]);
        if !self.filter.accepts(&Meta { kind, interface, member, path, sender }, names) {
            return None;
        }
        let error_name = h.error_name().map(|e| e.as_str());
        let plugin_id = names.first().map(String::as_str).or(interface).or(error_name).unwrap_or("dbus").to_string();
        let operation = match kind {
            Kind::Signal | Kind::MethodCall => match (interface, member) {
                (Some(i), Some(m)) => format!("{i}.{m}"),
                (None, Some(m)) => m.to_string(),
                _ => kind.as_str().to_string(),
            },
            Kind::MethodReturn => "method_return".to_string(),
            Kind::Error => error_name.unwrap_or("error").to_string(),
        };
        // A body above the cap would be stored truncated anyway: store it raw
        // without decoding. Smaller ones decode within a memory budget.
        let decoded = if body_bytes.len() > self.max_data_bytes {
            Err(WireError::TooLarge(self.max_data_bytes))
        } else {
            self.decoder.decode_bounded(
                body_bytes,
                signature,
                big_endian,
                MAX_DEPTH,
                DECODE_BUDGET_FACTOR * self.max_data_bytes,
            )
        };
        let data = match decoded {
            Ok(v) => v,
            Err(e) => {
                // Kept, not skipped: the raw body and why it did not decode.
                metrics::counter!(m::BUS_UNDECODABLE).increment(1);
                tracing::debug!(error = %e, signature, "undecodable body; storing it raw");
                Value::map(vec![
                    (Value::Str("undecodable".into()), Value::Bin(body_bytes.to_vec())),
                    (Value::Str("error".into()), Value::Str(e.to_string())),
                ])
            }
        };
        let creds = sender.and_then(|s| creds.get(s));
        Some(RawEvent {
            source: Source::Dbus,
            plugin_id,
            operation,
            path: path.map(str::to_string),
            sender: sender.map(str::to_string),
            creds,
            captured_ns,
            signature: signature.to_string(),
            data,
        })
    }
}

/// A gap as a chain record: `internal`, plugin `org.opdbus`, operation
/// `org.opdbus.Gap`, data `{reason, dropped, first_ns, last_ns, bus}`
/// (`dropped` nil when unknown).
pub fn gap_event(g: &Gap, bus: &str) -> RawEvent {
    let s = |x: &str| Value::Str(x.to_string());
    RawEvent {
        source: Source::Internal,
        plugin_id: SERVICE_NAME.to_string(),
        operation: "org.opdbus.Gap".to_string(),
        path: None,
        sender: None,
        creds: None,
        captured_ns: g.last_ns,
        signature: String::new(),
        data: Value::map(vec![
            (s("reason"), s(g.reason.as_str())),
            (s("dropped"), g.dropped.map(Value::UInt).unwrap_or(Value::Nil)),
            (s("first_ns"), Value::int(g.first_ns)),
            (s("last_ns"), Value::int(g.last_ns)),
            (s("bus"), s(bus)),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Credentials;
    use crate::config::{BusConfig, MatchRule};

    const DBUS: &str = "org.freedesktop.DBus";

    fn mapper(cfg: &BusConfig) -> Mapper {
        Mapper::new(Filter::new(cfg), OwnNames::default(), "unix:path=/test".into(), 1024)
    }

    fn signal(
        sender: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> zbus::Message {
        zbus::Message::signal(path, iface, member).sender(sender).build(body).unwrap()
    }

    fn owner_changed(name: &str, old: &str, new: &str) -> zbus::Message {
        signal(DBUS, "/org/freedesktop/DBus", DBUS, "NameOwnerChanged", &(name, old, new))
    }

    fn map(m: &mut Mapper, msgs: Vec<zbus::Message>) -> Round {
        let items = msgs.into_iter().map(|msg| Captured::Message { msg, captured_ns: 7 }).collect();
        m.map_items(items, &CredsCache::default())
    }

    fn str_value(s: &str) -> Value {
        Value::Str(s.into())
    }

    /// A signal from a connection that owns a well-known name: the name is
    /// the plugin id (learned from NameOwnerChanged, in bus order), the
    /// operation is interface.member, the body is decoded with its
    /// signature kept, and the joining connection is asked about at once.
    #[test]
    fn a_signal_maps_to_its_owner_operation_and_decoded_body() {
        let mut m = mapper(&BusConfig::default());
        let r = map(
            &mut m,
            vec![
                owner_changed(":1.5", "", ":1.5"),
                owner_changed("org.freedesktop.NetworkManager", "", ":1.5"),
                signal(
                    ":1.5",
                    "/org/freedesktop/NetworkManager",
                    "org.freedesktop.NetworkManager",
                    "StateChanged",
                    &(70u32,),
                ),
            ],
        );
        assert_eq!(r.joined, vec![":1.5".to_string()]);
        let e = r.events.iter().find(|e| e.operation.ends_with("StateChanged")).expect("the signal is recorded");
        assert_eq!(e.source, Source::Dbus);
        assert_eq!(e.plugin_id, "org.freedesktop.NetworkManager");
        assert_eq!(e.operation, "org.freedesktop.NetworkManager.StateChanged");
        assert_eq!(e.path.as_deref(), Some("/org/freedesktop/NetworkManager"));
        assert_eq!(e.sender.as_deref(), Some(":1.5"));
        assert_eq!((e.signature.as_str(), e.captured_ns), ("u", 7));
        assert_eq!(e.data, Value::Array(vec![Value::UInt(70)]));
    }

    /// Without a well-known name the interface is the plugin id; a
    /// connection that leaves is reported so its credentials are forgotten.
    #[test]
    fn an_anonymous_sender_falls_back_to_the_interface_and_leaving_is_reported() {
        let mut m = mapper(&BusConfig::default());
        let r = map(
            &mut m,
            vec![signal(":1.9", "/x", "org.example.Thing", "Changed", &("a", 1i32)), owner_changed(":1.9", ":1.9", "")],
        );
        let e = r.events.iter().find(|e| e.operation == "org.example.Thing.Changed").unwrap();
        assert_eq!(e.plugin_id, "org.example.Thing");
        assert_eq!(e.data, Value::Array(vec![str_value("a"), Value::UInt(1)]));
        assert_eq!(r.left, vec![":1.9".to_string()]);
    }

    /// op-dbus never records its own traffic: from or to its connections,
    /// or to its name.
    #[test]
    fn own_traffic_is_skipped() {
        let own = OwnNames::default();
        own.set("service", Some(":1.77"));
        let cfg = BusConfig { method_calls: true, ..BusConfig::default() };
        let mut m = Mapper::new(Filter::new(&cfg), own, "b".into(), 1024);
        let mine = signal(":1.77", "/org/opdbus", "org.opdbus.Chain1", "BlocksAppended", &(1u64, 2u64, ""));
        let to_me = zbus::Message::method_call("/org/opdbus", "Verify")
            .sender(":1.3")
            .destination(SERVICE_NAME)
            .build(&())
            .unwrap();
        let to_other =
            zbus::Message::method_call("/x", "Get").sender(":1.3").destination("org.example.Thing").build(&()).unwrap();
        let other = signal(":1.3", "/x", "org.example.Thing", "Changed", &());
        let r = map(&mut m, vec![mine, to_me, to_other, other]);
        let ops: Vec<&str> = r.events.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(ops, ["Get", "org.example.Thing.Changed"]);
    }

    /// The rules decide: an excluded interface is not recorded.
    #[test]
    fn exclude_rules_leave_messages_out() {
        let cfg = BusConfig {
            exclude: vec![MatchRule { interface: Some("org.example.Noisy".into()), ..Default::default() }],
            ..BusConfig::default()
        };
        let mut m = mapper(&cfg);
        let r = map(
            &mut m,
            vec![
                signal(":1.2", "/a", "org.example.Noisy", "Tick", &()),
                signal(":1.2", "/a", "org.example.Quiet", "Tick", &()),
            ],
        );
        let ops: Vec<&str> = r.events.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(ops, ["org.example.Quiet.Tick"]);
    }

    /// A body above `max_data_bytes` is kept raw, with the reason, never
    /// decoded and never dropped.
    #[test]
    fn an_oversized_body_is_stored_raw() {
        let mut m = mapper(&BusConfig::default());
        let big = "x".repeat(2000);
        let r = map(&mut m, vec![signal(":1.2", "/a", "org.example.Big", "Blob", &(big.as_str(),))]);
        let Value::Map(fields) = &r.events[0].data else { panic!("{:?}", r.events[0].data) };
        assert!(fields
            .iter()
            .any(|(k, v)| k == &str_value("undecodable") && matches!(v, Value::Bin(b) if b.len() > 2000)));
        assert!(fields.iter().any(|(k, _)| k == &str_value("error")));
    }

    /// Credentials come from the cache when the sender is known.
    #[test]
    fn cached_credentials_are_attached() {
        let mut m = mapper(&BusConfig::default());
        let creds = CredsCache::default();
        let c = Credentials { uid: Some(1000), pid: Some(42), unit: None };
        creds.insert(":1.4", c.clone());
        let msg = signal(":1.4", "/a", "org.example.Thing", "Changed", &());
        let r = m.map_items(vec![Captured::Message { msg, captured_ns: 1 }], &creds);
        assert_eq!(r.events[0].creds, Some(c));
    }

    /// A gap record says what was lost, when, and on which bus.
    #[test]
    fn a_gap_becomes_an_internal_record() {
        let g = Gap { reason: super::super::capture::GapReason::QueueFull, dropped: Some(12), first_ns: 5, last_ns: 9 };
        let e = gap_event(&g, "unix:path=/b");
        assert_eq!(
            (e.source, e.plugin_id.as_str(), e.operation.as_str()),
            (Source::Internal, SERVICE_NAME, "org.opdbus.Gap")
        );
        assert_eq!(e.captured_ns, 9);
        let Value::Map(fields) = &e.data else { panic!() };
        assert!(fields.contains(&(str_value("dropped"), Value::UInt(12))));
        assert!(fields.contains(&(str_value("bus"), str_value("unix:path=/b"))));
    }
}
