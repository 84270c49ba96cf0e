//! `op-dbus import` as a library call: [`run_import`] reads JSON lines on a
//! thread of its own, hands them to the pipeline in batches, waits for each
//! batch to be durable, and says what happened in an [`ImportOutcome`].
//!
//! The reader and the acknowledgements run concurrently: the reader blocks
//! only on the pipeline's source edge (backpressure), the caller's thread
//! awaits the acks in order. What happens along the way (a batch durable, a
//! line skipped, progress) goes to an [`ImportObserver`], so that the
//! command line can print it as it happens and a test can collect it.
//! Parsing a line is [`crate::input`]; its names are re-exported here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::codec::hex;
use crate::config::Config;
use crate::messages::{Committed, Receipt, Submitter};
use crate::pipeline::{spawn_pipeline, PipelineConfig};

use crate::input::{parse_line, Limits, LineError, LineReader, ReadLine};

/// Lines per batch handed to the pipeline. Together with the queue
/// capacities this sets the import's memory: 512 keeps a 1M-line import
/// near 35 MB; 1024 cost ~7 MB more for no measurable speed.
pub const BATCH: usize = 512;

/// A batch is also handed over once its lines add up to this many bytes,
/// so that queues counted in batches stay bounded in bytes when events
/// are large (up to `input.max_data_bytes` each).
pub const BATCH_BYTES: usize = 4 << 20;

/// With `skip_invalid`, the first this many bad lines are reported one by
/// one (and kept in the outcome); the rest are only counted.
pub const REPORTED_SKIPS: u64 = 20;

/// How often [`ImportObserver::progress`] is called, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Where the lines come from.
pub enum Input {
    Stdin,
    File(PathBuf),
    Reader(Box<dyn Read + Send>),
}

impl Input {
    /// The command line's form: a path, or `-` for standard input.
    pub fn from_arg(path: &Path) -> Input {
        if path.as_os_str() == "-" {
            Input::Stdin
        } else {
            Input::File(path.to_path_buf())
        }
    }

    fn open(self) -> Result<Box<dyn Read + Send>, ImportError> {
        Ok(match self {
            Input::Stdin => Box::new(std::io::stdin()),
            Input::File(path) => match std::fs::File::open(&path) {
                Ok(f) => Box::new(f),
                Err(source) => return Err(ImportError::Open { path, source }),
            },
            Input::Reader(r) => r,
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Skip bad lines (each reported) instead of stopping at the first.
    pub(crate) skip_invalid: bool,
}

/// A line that could not be imported.
#[derive(Debug, PartialEq)]
pub struct BadLine {
    /// 1-based.
    pub(crate) line: u64,
    pub(crate) error: LineError,
}

/// A batch that became durable (`--report-commits` prints it as JSON).
/// Fields in alphabetical order: that is the order of the keys the hand-built
/// JSON had, and scripts read these lines.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CommitReport {
    /// Records durable so far in this import.
    pub(crate) committed: u64,
    pub(crate) head_hash: String,
    pub(crate) last_seq: u64,
    /// The input line of the batch's last record.
    pub(crate) through_line: u64,
}

/// What happens during an import, as it happens. Called from the reader
/// thread (`skipped`) and the caller's thread (the rest); every method
/// does nothing by default.
pub trait ImportObserver: Sync {
    /// Opening the chain cut this many bytes of an interrupted write.
    fn recovered(&self, _cut_bytes: u64) {}
    /// A bad line was skipped (`skip_invalid`); only the first
    /// [`REPORTED_SKIPS`].
    fn skipped(&self, _bad: &BadLine) {}
    /// A batch is durable.
    fn committed(&self, _report: &CommitReport) {}
    /// Records durable so far and the line they reach, at most every 250 ms.
    fn progress(&self, _committed: u64, _line: u64) {}
    /// No more progress will come.
    fn progress_done(&self) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl ImportObserver for Quiet {}

/// What an import did. An import that stopped early still returns an
/// outcome (everything before the stop is durable): see `stopped_at`,
/// `read_error` and `lost`.
#[derive(Debug)]
pub struct ImportOutcome {
    /// Records durable.
    pub(crate) committed: u64,
    /// Lines read (the last one read, 1-based).
    pub(crate) lines: u64,
    pub(crate) blank_lines: u64,
    pub(crate) invalid_lines: u64,
    /// The first [`REPORTED_SKIPS`] bad lines skipped with `skip_invalid`.
    pub skipped: Vec<BadLine>,
    /// The bad line that stopped the import (without `skip_invalid`);
    /// nothing from it on was written.
    pub(crate) stopped_at: Option<BadLine>,
    /// Reading the input failed after `lines` lines.
    pub(crate) read_error: Option<std::io::Error>,
    /// The pipeline stopped before every batch was acknowledged.
    pub(crate) lost: bool,
    /// The first and the last durable batch: the records got seqs
    /// `first_seq..=head.last_seq`.
    pub first_seq: Option<u64>,
    pub(crate) head: Option<Committed>,
    /// Bytes of an interrupted write that opening the chain cut.
    pub recovered_bytes: u64,
    pub(crate) seconds: f64,
}

impl ImportOutcome {
    /// Every line read is durable (or blank, or skipped as asked).
    pub fn is_complete(&self) -> bool {
        self.stopped_at.is_none() && self.read_error.is_none() && !self.lost
    }

    pub fn summary(&self) -> ImportSummary {
        ImportSummary {
            blank_lines: self.blank_lines,
            committed: self.committed,
            error: self.stopped_at.as_ref().map(|b| b.error.to_string()),
            head_hash: self.head.map(|h| hex(&h.head_hash)),
            head_seq: self.head.map(|h| h.last_seq),
            invalid_lines: self.invalid_lines,
            lines: self.lines,
            seconds: self.seconds,
            stopped_at_line: self.stopped_at.as_ref().map(|b| b.line),
        }
    }
}

/// The summary `import --json` prints. Fields in alphabetical order (the
/// key order of the hand-built JSON this replaced).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImportSummary {
    pub(crate) blank_lines: u64,
    pub(crate) committed: u64,
    pub(crate) error: Option<String>,
    pub(crate) head_hash: Option<String>,
    pub(crate) head_seq: Option<u64>,
    pub(crate) invalid_lines: u64,
    pub(crate) lines: u64,
    pub(crate) seconds: f64,
    pub(crate) stopped_at_line: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot open {}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    /// Starting the pipeline (or attaching the bus) failed.
    #[error(transparent)]
    Start(#[from] crate::pipeline::StartError),
    /// Draining the pipeline failed.
    #[error(transparent)]
    Shutdown(#[from] crate::pipeline::ShutdownError),
    #[error("the import reader panicked")]
    ReaderPanicked,
}

/// Imports `input` into the state dir of `cfg`, which must not be in use
/// (the pipeline takes the writer's lock). Takes no snapshots: an import
/// is not the daemon. Needs no runtime: it makes its own.
pub fn run_import(
    cfg: &Config,
    input: Input,
    opts: ImportOptions,
    observer: &dyn ImportObserver,
) -> Result<ImportOutcome, ImportError> {
    let input = input.open()?;
    let limits = Limits { max_data_bytes: cfg.max_data_bytes, max_depth: cfg.max_depth };
    let pc = PipelineConfig::one_shot(cfg);
    let deadline = cfg.shutdown_deadline;
    let started = Instant::now();

    let system = actix_rt::System::new();
    std::thread::scope(|scope| {
        system.block_on(async move {
            let pipeline = spawn_pipeline(pc)?;
            let recovered_bytes = pipeline.recovery.cut_bytes;
            if recovered_bytes > 0 {
                observer.recovered(recovered_bytes);
            }
            let submitter = pipeline.submitter();
            let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<Sent>(256);
            let reader = scope.spawn(move || read_lines(input, limits, opts, submitter, sent_tx, observer));

            let (mut committed, mut first_seq, mut head, mut lost) = (0u64, None, None, false);
            let mut last_progress = Instant::now();
            while let Some(sent) = sent_rx.recv().await {
                match sent.ack.durable().await {
                    Ok(c) => {
                        committed += sent.count as u64;
                        first_seq.get_or_insert(c.first_seq);
                        head = Some(c);
                        observer.committed(&CommitReport {
                            committed,
                            head_hash: hex(&c.head_hash),
                            last_seq: c.last_seq,
                            through_line: sent.last_line,
                        });
                        if last_progress.elapsed() > PROGRESS_EVERY {
                            observer.progress(committed, sent.last_line);
                            last_progress = Instant::now();
                        }
                    }
                    _ => {
                        lost = true;
                        break;
                    }
                }
            }
            // The reader's next hand-over fails if the acks stopped early.
            drop(sent_rx);
            let read = reader.join().map_err(|_| ImportError::ReaderPanicked)?;
            observer.progress_done();
            pipeline.shutdown(deadline).await?;
            Ok(ImportOutcome {
                committed,
                lines: read.lines,
                blank_lines: read.blank,
                invalid_lines: read.invalid,
                skipped: read.skipped,
                stopped_at: read.stopped_at,
                read_error: read.io_error,
                lost,
                first_seq,
                head,
                recovered_bytes,
                seconds: started.elapsed().as_secs_f64(),
            })
        })
    })
}

/// What the reader thread hands the acknowledgement loop for each batch.
struct Sent {
    last_line: u64,
    count: usize,
    ack: Receipt,
}

#[derive(Default)]
struct ReadOutcome {
    lines: u64,
    blank: u64,
    invalid: u64,
    skipped: Vec<BadLine>,
    stopped_at: Option<BadLine>,
    io_error: Option<std::io::Error>,
}

/// The reader thread: lines to events, events to batches, batches to the
/// pipeline's source (waiting for room), each batch's ack to the loop.
fn read_lines(
    input: Box<dyn Read + Send>,
    limits: Limits,
    opts: ImportOptions,
    submitter: Submitter,
    sent_tx: tokio::sync::mpsc::Sender<Sent>,
    observer: &dyn ImportObserver,
) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    let mut lines = LineReader::new(std::io::BufReader::with_capacity(256 << 10, input), limits.max_line_bytes());
    let mut buf = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut batch_bytes = 0usize;
    let flush = |batch: &mut Vec<_>, last_line: u64| -> bool {
        if batch.is_empty() {
            return true;
        }
        let count = batch.len();
        let events = std::mem::replace(batch, Vec::with_capacity(BATCH));
        submitter.blocking_send(events).is_ok_and(|ack| sent_tx.blocking_send(Sent { last_line, count, ack }).is_ok())
    };
    loop {
        // Hand over a partial batch before waiting on a slow pipe.
        if !batch.is_empty() && lines.buffer_empty() {
            batch_bytes = 0;
            if !flush(&mut batch, lines.line_no) {
                break;
            }
        }
        let now = crate::codec::now_ns();
        let event = match lines.next_line(&mut buf) {
            Err(e) => {
                out.io_error = Some(e);
                break;
            }
            Ok(ReadLine::Eof) => break,
            Ok(ReadLine::TooLong) => Err(LineError::TooLong(limits.max_line_bytes())),
            Ok(ReadLine::Line(l)) if l.iter().all(u8::is_ascii_whitespace) => {
                out.blank += 1;
                continue;
            }
            Ok(ReadLine::Line(l)) => {
                batch_bytes += l.len();
                parse_line(l, limits, now)
            }
        };
        out.lines = lines.line_no;
        match event {
            Ok(e) => {
                batch.push(e);
                if batch.len() >= BATCH || batch_bytes >= BATCH_BYTES {
                    batch_bytes = 0;
                    if !flush(&mut batch, lines.line_no) {
                        break;
                    }
                }
            }
            Err(error) => {
                out.invalid += 1;
                let bad = BadLine { line: lines.line_no, error };
                if !opts.skip_invalid {
                    out.stopped_at = Some(bad);
                    break;
                }
                if out.invalid <= REPORTED_SKIPS {
                    observer.skipped(&bad);
                    out.skipped.push(bad);
                }
            }
        }
    }
    let last = out.stopped_at.as_ref().map_or(lines.line_no, |b| b.line - 1);
    flush(&mut batch, last);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::Overrides;

    fn config(state: &Path) -> Config {
        let flags = Overrides { state_dir: Some(state.to_path_buf()), ..Default::default() };
        Config::load(Some(Path::new("/dev/null")), |_| None, &flags).unwrap()
    }

    fn line(i: u64) -> String {
        format!(
            r#"{{"plugin_id":"org.example.app","operation":"org.example.app.Tick","data":{{"i":{i}}},"timestamp":{i}}}"#
        )
    }

    fn lines(ls: &[String]) -> Input {
        Input::Reader(Box::new(std::io::Cursor::new(ls.join("\n").into_bytes())))
    }

    #[derive(Default)]
    struct Collect {
        skipped: Mutex<Vec<u64>>,
        committed: Mutex<Vec<CommitReport>>,
    }
    impl ImportObserver for Collect {
        fn skipped(&self, bad: &BadLine) {
            self.skipped.lock().unwrap().push(bad.line);
        }
        fn committed(&self, r: &CommitReport) {
            self.committed.lock().unwrap().push(r.clone());
        }
    }

    #[test]
    fn a_bad_line_stops_the_import_and_skip_invalid_goes_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir.path().join("state"));
        let mut input: Vec<String> = (0..5).map(line).collect();
        input.insert(3, r#"{"plugin_id":"p","operation":"o"}"#.into());
        input.insert(1, "   ".into());
        // Lines: 1 good, 2 blank, 3 and 4 good, 5 without data, 6 and 7 good.

        let o = run_import(&cfg, lines(&input), ImportOptions::default(), &Quiet).unwrap();
        assert!(!o.is_complete());
        assert_eq!((o.committed, o.lines, o.blank_lines, o.invalid_lines), (3, 5, 1, 1));
        let bad = o.stopped_at.as_ref().unwrap();
        assert_eq!((bad.line, &bad.error), (5, &LineError::MissingData));
        assert_eq!((o.first_seq, o.head.map(|h| h.last_seq)), (Some(0), Some(2)));
        let s = o.summary();
        assert_eq!(
            (s.stopped_at_line, s.error.as_deref()),
            (Some(5), Some("missing field `data` (use null for no data)"))
        );

        // The same input again, past the bad line: it appends after the first three.
        let seen = Collect::default();
        let o = run_import(&cfg, lines(&input), ImportOptions { skip_invalid: true }, &seen).unwrap();
        assert!(o.is_complete(), "{o:?}");
        assert_eq!((o.committed, o.lines, o.blank_lines, o.invalid_lines), (5, 7, 1, 1));
        assert_eq!(o.skipped, vec![BadLine { line: 5, error: LineError::MissingData }]);
        assert_eq!(*seen.skipped.lock().unwrap(), [5]);
        assert_eq!((o.first_seq, o.head.map(|h| h.last_seq)), (Some(3), Some(7)));
        let commits = seen.committed.lock().unwrap();
        let last = commits.last().unwrap();
        assert_eq!((last.committed, last.last_seq, last.through_line), (5, 7, 7));
        assert_eq!(last.head_hash, hex(&o.head.unwrap().head_hash));
        let summary = serde_json::to_value(o.summary()).unwrap();
        assert_eq!(summary["stopped_at_line"], serde_json::Value::Null);
        assert_eq!(summary["head_seq"], 7);
    }

    #[test]
    fn skipped_lines_past_the_reported_ones_are_only_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir.path().join("state"));
        let input: Vec<String> = (0..30).map(|i| if i % 2 == 0 { "{nope".into() } else { line(i) }).collect();
        let seen = Collect::default();
        let o = run_import(&cfg, lines(&input), ImportOptions { skip_invalid: true }, &seen).unwrap();
        assert_eq!((o.committed, o.invalid_lines), (15, 15));
        let too_many = input.iter().chain(input.iter()).cloned().collect::<Vec<_>>();
        let o = run_import(&cfg, lines(&too_many), ImportOptions { skip_invalid: true }, &seen).unwrap();
        assert_eq!((o.committed, o.invalid_lines, o.skipped.len() as u64), (30, 30, REPORTED_SKIPS));
        assert_eq!(o.skipped.last().unwrap().line, 39);
    }

    #[test]
    fn a_missing_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir.path().join("state"));
        let e = run_import(&cfg, Input::File(dir.path().join("absent")), ImportOptions::default(), &Quiet).unwrap_err();
        assert!(matches!(e, ImportError::Open { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot open "), "{e}");
    }

    #[test]
    fn the_summary_keeps_the_key_order_of_the_hand_built_json() {
        let s = ImportSummary {
            blank_lines: 1,
            committed: 2,
            error: None,
            head_hash: Some("ab".into()),
            head_seq: Some(1),
            invalid_lines: 0,
            lines: 3,
            seconds: 0.5,
            stopped_at_line: None,
        };
        let typed = serde_json::to_string(&s).unwrap();
        assert_eq!(typed, serde_json::to_value(&s).unwrap().to_string());
        let c = CommitReport { committed: 1, head_hash: "ab".into(), last_seq: 0, through_line: 1 };
        assert_eq!(serde_json::to_string(&c).unwrap(), serde_json::to_value(&c).unwrap().to_string());
    }
}
