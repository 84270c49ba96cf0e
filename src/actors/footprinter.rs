//! Footprinter: consumes [`RawEventBatch`]es from sources, emits
//! [`FootprintBatch`]es to the Embedder. Owns the canonical encoding of
//! event data and the size cap: data above `max_data_bytes` is stored
//! truncated (see [`footprint`]) with the hash of the full data.

use actix::prelude::*;

use crate::codec::{self, Footprint, Value, FLAG_TRUNCATED, MAX_FIELD_BYTES};
use crate::messages::{FootprintBatch, PipelineError, RawEvent, RawEventBatch};
use crate::metrics as m;
use crate::runtime::edge::{Inbox, Outbox};
use crate::runtime::{delivered, delivery, Delivery, Stage};

pub struct Footprinter {
    out: Option<Outbox<FootprintBatch>>,
    max_data_bytes: usize,
}

impl Footprinter {
    pub fn new(out: Outbox<FootprintBatch>, max_data_bytes: usize) -> Self {
        Footprinter { out: Some(out), max_data_bytes }
    }
}

impl Actor for Footprinter {
    type Context = Context<Self>;
}

impl Stage for Footprinter {
    type Input = Inbox<RawEventBatch>;
    const NAME: &'static str = "footprinter";
    /// `import` batches 512 events, so this bounds the stage's backlog to
    /// about 2k events: enough to keep the stage busy while the source
    /// parses the next batch, small enough that a stalled writer pushes
    /// back on the source within a few milliseconds.
    const INBOX_CAPACITY: usize = 4;

    fn on_batches(&mut self, batches: Vec<RawEventBatch>, _: &mut Context<Self>) -> Delivery<Self> {
        let max = self.max_data_bytes;
        let out: Vec<FootprintBatch> = batches
            .into_iter()
            .filter_map(|b| {
                if b.events.is_empty() {
                    // No seq range to report for nothing: answer now.
                    if let Some(ack) = b.ack {
                        let _ = ack.send(Err(PipelineError::EmptyBatch));
                    }
                    return None;
                }
                Some(FootprintBatch { items: b.events.into_iter().map(|e| footprint(e, max)).collect(), ack: b.ack })
            })
            .collect();
        let tx = self.out.clone();
        delivery(async move {
            let Some(tx) = tx else { return };
            for batch in out {
                let n = batch.items.len() as u64;
                if tx.send(batch).await.is_err() {
                    tracing::error!("embedder is gone; dropping footprints (their submitters get an error)");
                    return;
                }
                metrics::counter!(m::STAGE_SENT, "stage" => Self::NAME).increment(n);
            }
        })
    }

    fn on_closed(&mut self, _: &mut Context<Self>) -> Delivery<Self> {
        self.out = None;
        delivered()
    }
}

/// Cuts `s` to at most `MAX_FIELD_BYTES` at a character boundary.
fn capped(mut s: String) -> String {
    if s.len() > MAX_FIELD_BYTES {
        let mut cut = MAX_FIELD_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        metrics::counter!(m::TRUNCATED).increment(1);
        tracing::warn!(bytes = MAX_FIELD_BYTES, "a footprint field was longer than the cap and was cut");
    }
    s
}

/// Turns a raw event into a footprint. Data whose canonical encoding is
/// larger than `max_data_bytes` is stored as a `bin` holding the first
/// `max_data_bytes` bytes of that encoding, flagged [`FLAG_TRUNCATED`];
/// `data_hash` is always the hash of the full encoding. Text fields are
/// capped at [`MAX_FIELD_BYTES`].
pub fn footprint(e: RawEvent, max_data_bytes: usize) -> (Footprint, Value) {
    let full = e.data.encode();
    let data_hash = codec::data_hash(&full);
    let (data, flags) = if full.len() > max_data_bytes {
        metrics::counter!(m::TRUNCATED).increment(1);
        (Value::Bin(full[..max_data_bytes].to_vec()).encode(), FLAG_TRUNCATED)
    } else {
        (full, 0)
    };
    let fp = Footprint {
        source: e.source,
        plugin_id: capped(e.plugin_id),
        operation: capped(e.operation),
        path: e.path.map(capped),
        sender: e.sender.map(capped),
        creds: e.creds,
        captured_ns: e.captured_ns,
        signature: capped(e.signature),
        data,
        data_hash,
        flags,
    };
    (fp, e.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Source;
    use crate::runtime::edge::edge;

    fn raw(data: Value) -> RawEvent {
        RawEvent {
            source: Source::Import,
            plugin_id: "p".into(),
            operation: "p.Op".into(),
            path: None,
            sender: None,
            creds: None,
            captured_ns: 7,
            signature: String::new(),
            data,
        }
    }

    #[test]
    fn data_is_encoded_and_hashed() {
        let v = Value::map(vec![(Value::Str("k".into()), Value::UInt(1))]);
        let (fp, back) = footprint(raw(v.clone()), 1024);
        assert_eq!(back, v);
        assert_eq!(fp.data, v.encode());
        assert_eq!(fp.data_hash, codec::data_hash(&v.encode()));
        assert_eq!(fp.flags, 0);
    }

    #[test]
    fn long_text_fields_are_capped() {
        let mut e = raw(Value::Nil);
        e.path = Some("é".repeat(5000));
        let (fp, _) = footprint(e, 1024);
        let p = fp.path.unwrap();
        assert!(p.len() <= MAX_FIELD_BYTES && p.len() >= MAX_FIELD_BYTES - 1);
    }

    #[actix_rt::test]
    async fn an_empty_batch_is_answered_at_once_and_not_forwarded() {
        let (src, inbox) = edge("test->footprinter", 4);
        let (out, mut probe) = edge::<FootprintBatch>("footprinter->probe", 4);
        let _stage = crate::runtime::start(inbox, move || Footprinter::new(out, 1024));
        let (ack, rx) = tokio::sync::oneshot::channel();
        src.send(RawEventBatch { events: vec![], ack: Some(ack) }).await.unwrap();
        assert_eq!(rx.await.unwrap(), Err(PipelineError::EmptyBatch));
        drop(src);
        assert!(probe.recv(10, std::time::Duration::ZERO).await.is_empty());
    }

    #[test]
    fn data_above_the_cap_is_truncated_with_the_full_hash() {
        let v = Value::Str("x".repeat(100));
        let (fp, _) = footprint(raw(v.clone()), 10);
        assert_eq!(fp.flags, FLAG_TRUNCATED);
        assert_eq!(fp.data_hash, codec::data_hash(&v.encode()));
        assert_eq!(Value::decode(&fp.data).unwrap(), Value::Bin(v.encode()[..10].to_vec()));
    }

    /// The actor with a probe in place of the Embedder.
    #[actix_rt::test]
    async fn forwards_batches_in_order_with_their_acks() {
        let (src, inbox) = edge("test->footprinter", 4);
        let (out, mut probe) = edge("footprinter->probe", 4);
        let _stage = crate::runtime::start(inbox, move || Footprinter::new(out, 1024));
        for i in 0..3 {
            let (ack, _rx) = tokio::sync::oneshot::channel();
            src.send(RawEventBatch { events: vec![raw(Value::UInt(i))], ack: Some(ack) }).await.unwrap();
        }
        drop(src);
        let mut seen = Vec::new();
        loop {
            let got = probe.recv(100, std::time::Duration::ZERO).await;
            if got.is_empty() {
                break;
            }
            for b in got {
                assert!(b.ack.is_some());
                seen.extend(b.items.into_iter().map(|(_, v)| v));
            }
        }
        assert_eq!(seen, vec![Value::UInt(0), Value::UInt(1), Value::UInt(2)]);
    }
}
