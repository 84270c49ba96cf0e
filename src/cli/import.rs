//! `op-dbus import FILE`: JSON lines into the chain; exit 1 at a bad line.

use std::io::{IsTerminal, Write};

use super::{init_tracing, load_config, Failure, Global, ImportArgs, EXIT_PROBLEM};
use crate::config::Overrides;
use crate::import::{run_import, BadLine, CommitReport, ImportObserver, ImportOptions, Input};

/// Prints what happens as it happens: skipped lines and recovery on
/// stderr, `--report-commits` lines on stdout, progress on a terminal.
struct Printer {
    report_commits: bool,
    progress: bool,
}

impl ImportObserver for Printer {
    fn recovered(&self, cut_bytes: u64) {
        eprintln!("op-dbus: recovered: cut {cut_bytes} bytes of an interrupted write at the end of the chain");
    }

    fn skipped(&self, bad: &BadLine) {
        eprintln!("op-dbus: line {}: {} (skipped)", bad.line, bad.error);
    }

    fn committed(&self, report: &CommitReport) {
        if self.report_commits {
            let line = serde_json::to_string(report).expect("a struct of numbers and strings serializes");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn progress(&self, committed: u64, line: u64) {
        if self.progress {
            eprint!("\rimported {committed} records (line {line})");
        }
    }

    fn progress_done(&self) {
        if self.progress {
            eprintln!();
        }
    }
}

pub(super) fn run(global: &Global, a: ImportArgs) -> Result<u8, Failure> {
    let flags = Overrides { vector_level: a.vector_level.clone(), max_batch: a.max_batch, ..Default::default() };
    let cfg = load_config(global, flags)?;
    init_tracing();
    let printer = Printer { report_commits: a.report_commits, progress: std::io::stderr().is_terminal() };
    let opts = ImportOptions { skip_invalid: a.skip_invalid };
    let o = run_import(&cfg, Input::from_arg(&a.file), opts, &printer).map_err(Failure::runtime)?;
    if a.json {
        println!("{}", serde_json::to_string(&o.summary()).map_err(Failure::runtime)?);
    } else {
        let head = o
            .head
            .map_or("none".to_string(), |h| format!("seq {} hash {}", h.last_seq, crate::codec::hex(&h.head_hash)));
        println!(
            "committed {} records in {:.2}s ({:.0}/s); head {head}",
            o.committed,
            o.seconds,
            o.committed as f64 / o.seconds.max(1e-9)
        );
        if o.invalid_lines > 0 && a.skip_invalid {
            println!("skipped {} invalid lines", o.invalid_lines);
        }
        if o.blank_lines > 0 {
            println!("ignored {} blank lines", o.blank_lines);
        }
    }
    if let Some(e) = &o.read_error {
        return Err(Failure::runtime(anyhow::anyhow!("reading input failed after line {}: {e}", o.lines)));
    }
    if o.lost {
        return Err(Failure::runtime(anyhow::anyhow!("the pipeline stopped before all records were durable")));
    }
    if let Some(bad) = &o.stopped_at {
        eprintln!(
            "op-dbus: line {}: {}; nothing from this line on was written (use --skip-invalid to go past bad lines)",
            bad.line, bad.error
        );
        return Ok(EXIT_PROBLEM);
    }
    Ok(0)
}
