//! Embedder: consumes [`FootprintBatch`]es, emits [`RecordBatch`]es (each
//! footprint with its vector, or none) to the ChainWriter. Only the
//! heuristic vector is bound into blocks (at every level but `none`): it
//! costs microseconds, so the chain never waits on a model. The ML levels'
//! embeddings are derived data, made after the fact by the vector worker
//! (`crate::ml::worker`).

use actix::prelude::*;

use crate::chain::{Embedding, Record};
use crate::messages::{FootprintBatch, RecordBatch};
use crate::metrics as m;
use crate::ml::VectorLevel;
use crate::runtime::edge::{Inbox, Outbox};
use crate::runtime::{delivered, delivery, Delivery, Stage};
use crate::vector::{heuristic, HEURISTIC_MODEL};

pub struct Embedder {
    out: Option<Outbox<RecordBatch>>,
    with_vectors: bool,
}

impl Embedder {
    pub fn new(out: Outbox<RecordBatch>, level: VectorLevel) -> Self {
        Embedder { out: Some(out), with_vectors: level != VectorLevel::None }
    }
}

impl Actor for Embedder {
    type Context = Context<Self>;
}

impl Stage for Embedder {
    type Input = Inbox<FootprintBatch>;
    const NAME: &'static str = "embedder";
    /// As for the Footprinter, a few batches of slack between two CPU-bound stages.
    const INBOX_CAPACITY: usize = 4;

    fn on_batches(&mut self, batches: Vec<FootprintBatch>, _: &mut Context<Self>) -> Delivery<Self> {
        let with_vectors = self.with_vectors;
        let out: Vec<RecordBatch> = batches
            .into_iter()
            .map(|b| RecordBatch {
                records: b
                    .items
                    .into_iter()
                    .map(|(footprint, value)| {
                        let embedding = with_vectors.then(|| Embedding {
                            model: HEURISTIC_MODEL,
                            values: heuristic(&footprint, &value).to_vec(),
                        });
                        Record { footprint, embedding }
                    })
                    .collect(),
                ack: b.ack,
            })
            .collect();
        let tx = self.out.clone();
        delivery(async move {
            let Some(tx) = tx else { return };
            for batch in out {
                let n = batch.records.len() as u64;
                if tx.send(batch).await.is_err() {
                    tracing::error!("chain writer is gone; dropping records (their submitters get an error)");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::footprinter::footprint;
    use crate::codec::{Source, Value};
    use crate::messages::RawEvent;
    use crate::runtime::edge::edge;

    fn item(i: u64) -> (crate::codec::Footprint, Value) {
        footprint(
            RawEvent {
                source: Source::Import,
                plugin_id: "org.freedesktop.NetworkManager".into(),
                operation: "org.freedesktop.NetworkManager.StateChanged".into(),
                path: None,
                sender: None,
                creds: None,
                captured_ns: i as i64,
                signature: String::new(),
                data: Value::UInt(i),
            },
            1024,
        )
    }

    async fn run(level: VectorLevel) -> Vec<Record> {
        let (src, inbox) = edge("test->embedder", 4);
        let (out, mut probe) = edge("embedder->probe", 4);
        let _stage = crate::runtime::start(inbox, move || Embedder::new(out, level));
        src.send(FootprintBatch { items: vec![item(1), item(2)], ack: None }).await.unwrap();
        drop(src);
        let mut records = Vec::new();
        loop {
            let got = probe.recv(100, std::time::Duration::ZERO).await;
            if got.is_empty() {
                return records;
            }
            records.extend(got.into_iter().flat_map(|b| b.records));
        }
    }

    #[actix_rt::test]
    async fn heuristic_level_attaches_64_dims() {
        let records = run(VectorLevel::Heuristic).await;
        assert_eq!(records.len(), 2);
        for r in &records {
            let e = r.embedding.as_ref().unwrap();
            assert_eq!(e.model, HEURISTIC_MODEL);
            assert_eq!(e.values.len(), 64);
        }
    }

    #[actix_rt::test]
    async fn level_none_attaches_nothing() {
        let records = run(VectorLevel::None).await;
        assert!(records.iter().all(|r| r.embedding.is_none()));
    }
}
