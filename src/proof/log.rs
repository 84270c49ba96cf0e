//! The checkpoint log `@timing/checkpoints` and the cosigned checkpoints
//! `@timing/cosigned` (docs/FORMAT.md, "Checkpoints"): append-only files
//! framed like the chain's segments, so the one frame parser
//! (`chain::reader::next_frame`) reads them and the same torn-tail rule
//! applies. They live in the chain's area: snapshots and replicas carry
//! them, and a replica's last checkpoint is what a rewritten history is
//! checked against.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::chain::reader::{check_header, next_frame, Step};
use crate::chain::{segment_header, FRAME_HEADER_LEN, HEADER_LEN};

pub const CHECKPOINTS_MAGIC: &[u8; 8] = b"OPDCKPTS";
pub const COSIGNED_MAGIC: &[u8; 8] = b"OPDCOSIG";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is damaged at offset {offset}: {reason}", path.display())]
    Damaged { path: PathBuf, offset: u64, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// One of the two logs, opened for appending (one writer: the checkpointer).
#[derive(Debug)]
pub struct NoteLog {
    path: PathBuf,
    file: File,
    len: u64,
}

/// What a log holds: each record's bytes and its offset, and the torn tail
/// (a crash during an append) if any.
#[derive(Debug, Default)]
pub struct Records {
    pub notes: Vec<(u64, Vec<u8>)>,
    pub torn: Option<(u64, &'static str)>,
}

/// Reads every record of a log; a missing file holds none.
pub fn read_all(path: &Path, magic: &[u8; 8]) -> Result<Records, LogError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Records::default()),
        Err(e) => return Err(LogError::Io { path: path.to_path_buf(), source: e }),
    };
    let damaged =
        |offset: u64, reason: &str| LogError::Damaged { path: path.to_path_buf(), offset, reason: reason.into() };
    if bytes.len() < HEADER_LEN as usize {
        // A crash while the header was written: nothing was ever recorded.
        return Ok(Records { notes: Vec::new(), torn: Some((0, "incomplete header")) });
    }
    match check_header(&bytes, magic) {
        Ok((0, 0)) => {}
        Ok(_) => return Err(damaged(0, "header fields are not zero")),
        Err(e) => return Err(damaged(0, e)),
    }
    let mut out = Records::default();
    let mut pos = HEADER_LEN as usize;
    loop {
        match next_frame(&bytes, pos, 0) {
            Step::End => break,
            Step::Frame { offset, payload } => {
                out.notes.push((offset, payload.to_vec()));
                pos += FRAME_HEADER_LEN + payload.len();
            }
            Step::Torn { offset, reason } => {
                out.torn = Some((offset, reason));
                break;
            }
            Step::Bad { offset, reason } => return Err(damaged(offset, reason)),
        }
    }
    Ok(out)
}

impl NoteLog {
    /// Opens (creating) a log, cutting a torn tail: it holds a record that
    /// was never synced, so it was never published.
    pub fn open(path: &Path, magic: &[u8; 8]) -> Result<(NoteLog, Vec<Vec<u8>>), LogError> {
        let records = read_all(path, magic)?;
        let mut file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(io_err(path))?;
        let mut len = file.metadata().map_err(io_err(path))?.len();
        if len < HEADER_LEN {
            file.set_len(0).map_err(io_err(path))?;
            file.write_all(&segment_header(magic, 0, 0)).and_then(|()| file.sync_all()).map_err(io_err(path))?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
            len = HEADER_LEN;
        } else if let Some((offset, reason)) = records.torn {
            tracing::warn!(file = %path.display(), offset, reason, "cutting an unfinished checkpoint record");
            file.set_len(offset).and_then(|()| file.sync_data()).map_err(io_err(path))?;
            len = offset;
        }
        let notes = records.notes.into_iter().map(|(_, n)| n).collect();
        Ok((NoteLog { path: path.to_path_buf(), file, len }, notes))
    }

    /// Appends one record and fdatasyncs: when this returns it is durable.
    /// A failed write is cut back, so the file never holds half a record
    /// that a later append would follow.
    pub fn append(&mut self, note: &[u8]) -> Result<(), LogError> {
        use std::os::unix::fs::FileExt;
        let len = note.len() as u32;
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + note.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&(!len).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(note).to_le_bytes());
        frame.extend_from_slice(note);
        let r = self.file.write_all_at(&frame, self.len).and_then(|()| self.file.sync_data());
        if let Err(source) = r {
            let _ = self.file.set_len(self.len);
            return Err(LogError::Io { path: self.path.clone(), source });
        }
        self.len += frame.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("checkpoints");
        let (mut log, notes) = NoteLog::open(&p, CHECKPOINTS_MAGIC).unwrap();
        assert!(notes.is_empty());
        log.append(b"one note, long enough to be a frame\n").unwrap();
        log.append(b"two notes, long enough to be a frame\n").unwrap();
        drop(log);
        // A crash in the middle of a third append.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[40, 0, 0, 0, !40u8, 255, 255, 255, 1, 2]).unwrap();
        drop(f);
        assert!(read_all(&p, CHECKPOINTS_MAGIC).unwrap().torn.is_some());
        let (mut log, notes) = NoteLog::open(&p, CHECKPOINTS_MAGIC).unwrap();
        assert_eq!(notes.len(), 2);
        log.append(b"three notes, long enough to be a frame\n").unwrap();
        let r = read_all(&p, CHECKPOINTS_MAGIC).unwrap();
        assert_eq!((r.notes.len(), r.torn), (3, None));
        assert!(r.notes[2].1.starts_with(b"three"));
        // A flipped byte inside a complete record is damage, never cut.
        let mut b = fs::read(&p).unwrap();
        b[HEADER_LEN as usize + 20] ^= 4;
        fs::write(&p, &b).unwrap();
        assert!(matches!(NoteLog::open(&p, CHECKPOINTS_MAGIC), Err(LogError::Damaged { .. })));
        assert!(matches!(read_all(&p, COSIGNED_MAGIC), Err(LogError::Damaged { offset: 0, .. })));
    }
}
