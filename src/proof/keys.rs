//! The identity key and the forward-secure epoch keys (docs/FORMAT.md,
//! "Keys"). Everything here lives in `<state dir>/keys/`, which is not an
//! area: snapshots and replicas never hold it, because a copy of a secret
//! that was erased on the host would defeat the erasure.
//!
//! The one secret the host keeps is the seed of the current epoch, in
//! `epoch.secret`. Moving to a later epoch overwrites it *in place* with the
//! later seed and fdatasyncs, so the old bytes are gone from the file. On a
//! copy-on-write filesystem an overwrite normally lands in new blocks and
//! leaves the old ones on disk until reused; the folder is made `NOCOW`
//! (`chattr +C`) on BTRFS before any file is created in it, which makes
//! BTRFS overwrite in place (files inherit the flag; it only takes on empty
//! files). What remains outside our reach is written down in ARCHITECTURE.md
//! ("Key erasure").

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::note::checkpoint::{certify_epoch, EpochLine};
use crate::note::{Signer, Verifier};

const CERTS_MAGIC: &[u8; 8] = b"OPDEPOCH";
const CERTS_HEADER: u64 = 40;
/// Public key (32) and certificate signature (key id 4 + signature 64).
const CERT_LEN: u64 = 100;
const SECRET_LEN: usize = 44;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("no keys in {}: run `op-dbus keys init`", dir.display())]
    Missing { dir: PathBuf },
    #[error("keys already exist in {}", dir.display())]
    Exists { dir: PathBuf },
    #[error("the secret of epoch {wanted} was erased (the host holds epoch {held}'s): the clock is behind the last epoch signed")]
    Erased { wanted: u64, held: u64 },
    #[error("epoch {epoch} is not provisioned (the keys end with epoch {last}): renew with `op-dbus keys renew --identity FILE`")]
    NotProvisioned { epoch: u64, last: i128 },
    #[error("the time is before the first epoch of these keys")]
    BeforeFirstEpoch,
    #[error("the identity secret does not belong to the identity in {}", path.display())]
    WrongIdentity { path: PathBuf },
    #[error(transparent)]
    Note(#[from] crate::note::NoteError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// Epoch `e` is unix time `[t0 + e·len, t0 + (e+1)·len)` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub t0: u64,
    pub len: u64,
}

impl Schedule {
    /// The epoch holding `time_ns`; `None` before epoch 0.
    pub fn epoch_of(&self, time_ns: i64) -> Option<u64> {
        let t = u64::try_from(time_ns).ok()? / 1_000_000_000;
        t.checked_sub(self.t0).map(|d| d / self.len)
    }

    pub fn start(&self, epoch: u64) -> u64 {
        self.t0 + epoch * self.len
    }
}

/// `seed(e+1)` from `seed(e)`: one way, so a seed never yields an earlier one.
pub fn next_seed(seed: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(b"op-dbus:epoch-seed:v1\0").chain_update(seed).finalize().into()
}

/// The Ed25519 private key seed of the epoch whose evolving seed is `seed`.
pub fn epoch_secret(seed: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(b"op-dbus:epoch-key:v1\0").chain_update(seed).finalize().into()
}

/// `op-dbus/<32 hex digits>` from /etc/machine-id: an app-specific id, so
/// the machine id itself is not published in every checkpoint.
pub fn default_origin() -> Result<String, KeyError> {
    let path = Path::new("/etc/machine-id");
    let id = fs::read_to_string(path).map_err(io_err(path))?;
    let h: [u8; 32] =
        Sha256::new().chain_update(b"op-dbus:origin:v1\0").chain_update(id.trim().as_bytes()).finalize().into();
    Ok(format!("op-dbus/{}", hex(&h[..16])))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One provisioned period: the certificates of epochs `first..first+count`,
/// read from its file on demand (a 30-day period is 4.3 MB; the daemon
/// needs one record an epoch).
#[derive(Debug)]
struct Period {
    path: PathBuf,
    file: File,
    first: u64,
    count: u64,
}

impl Period {
    fn open(path: &Path, schedule: Option<Schedule>) -> Result<(Period, Schedule), KeyError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut h = [0u8; CERTS_HEADER as usize];
        file.read_exact_at(&mut h, 0).map_err(io_err(path))?;
        let damaged = |detail: &str| KeyError::Damaged { path: path.to_path_buf(), detail: detail.to_string() };
        if &h[0..8] != CERTS_MAGIC || u32::from_le_bytes(h[8..12].try_into().expect("4")) != 1 {
            return Err(damaged("not an op-dbus epoch certificate file (version 1)"));
        }
        let len = u32::from_le_bytes(h[12..16].try_into().expect("4")) as u64;
        let t0 = u64::from_le_bytes(h[16..24].try_into().expect("8"));
        let first = u64::from_le_bytes(h[24..32].try_into().expect("8"));
        let count = u64::from_le_bytes(h[32..40].try_into().expect("8"));
        let size = file.metadata().map_err(io_err(path))?.len();
        if len == 0 || count == 0 || size != CERTS_HEADER + count * CERT_LEN {
            return Err(damaged("header and length disagree"));
        }
        let s = Schedule { t0, len };
        if schedule.is_some_and(|o| o != s) {
            return Err(damaged("a different epoch schedule from the other periods"));
        }
        Ok((Period { path: path.to_path_buf(), file, first, count }, s))
    }

    fn cert(&self, epoch: u64) -> Result<([u8; 32], Vec<u8>), KeyError> {
        let mut rec = [0u8; CERT_LEN as usize];
        let at = CERTS_HEADER + (epoch - self.first) * CERT_LEN;
        self.file.read_exact_at(&mut rec, at).map_err(io_err(&self.path))?;
        Ok((rec[..32].try_into().expect("32"), rec[32..].to_vec()))
    }
}

/// The keys of a state dir, opened for signing (the daemon, `import`) or
/// for reading what is provisioned (`status`, `keys status`).
#[derive(Debug)]
pub struct EpochKeys {
    dir: PathBuf,
    identity: Verifier,
    schedule: Schedule,
    periods: Vec<Period>,
}

/// The identity vkey as carried in the chain's area (`@timing/identity.pub`),
/// so that snapshots and replicas hold it; written by the checkpointer.
pub const CARRIED_IDENTITY: &str = "identity.pub";

pub fn keys_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("keys")
}

impl EpochKeys {
    /// The keys in `state_dir/keys`; `None` when there are none yet.
    pub fn open(state_dir: &Path) -> Result<Option<EpochKeys>, KeyError> {
        let dir = keys_dir(state_dir);
        let pub_path = dir.join("identity.pub");
        let text = match fs::read_to_string(&pub_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::Io { path: pub_path, source: e }),
        };
        let identity = Verifier::parse_vkey(&text)?;
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("epochs-") && n.ends_with(".certs"))
            .collect();
        names.sort();
        let mut periods = Vec::new();
        let mut schedule = None;
        for n in names {
            let (p, s) = Period::open(&dir.join(n), schedule)?;
            schedule = Some(s);
            periods.push(p);
        }
        let Some(schedule) = schedule else {
            return Err(KeyError::Damaged { path: dir, detail: "identity.pub but no epochs-*.certs".into() });
        };
        Ok(Some(EpochKeys { dir, identity, schedule, periods }))
    }

    pub fn identity(&self) -> &Verifier {
        &self.identity
    }

    pub fn origin(&self) -> &str {
        self.identity.name()
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// One past the last provisioned epoch.
    pub fn end_epoch(&self) -> u64 {
        self.periods.iter().map(|p| p.first + p.count).max().unwrap_or(0)
    }

    /// When the last provisioned epoch ends (unix seconds).
    pub fn provisioned_until(&self) -> u64 {
        self.schedule.start(self.end_epoch())
    }

    /// Whether the identity secret is still on this host.
    pub fn identity_secret_on_host(&self) -> bool {
        self.dir.join("identity.key").exists()
    }

    /// The certificate line of `epoch`.
    pub fn epoch_line(&self, epoch: u64) -> Result<EpochLine, KeyError> {
        let p = self
            .periods
            .iter()
            .find(|p| (p.first..p.first + p.count).contains(&epoch))
            .ok_or(KeyError::NotProvisioned { epoch, last: self.end_epoch() as i128 - 1 })?;
        let (public_key, cert_signature) = p.cert(epoch)?;
        let start = self.schedule.start(epoch);
        Ok(EpochLine { epoch, start, end: start + self.schedule.len, public_key, cert_signature })
    }

    /// The signing key of `epoch`, after erasing every earlier seed. An
    /// epoch before the one the host holds was erased: that is what forward
    /// security means, and it is an error here, never a silent fallback.
    pub fn signer_for(&self, epoch: u64) -> Result<(Signer, EpochLine), KeyError> {
        let line = self.epoch_line(epoch)?;
        let seed = self.advance_to(epoch)?;
        let signer = Signer::from_seed(self.origin(), &epoch_secret(&seed))?;
        if signer.public_key() != line.public_key {
            return Err(KeyError::Damaged {
                path: self.dir.join("epoch.secret"),
                detail: format!("the seed does not make the certified key of epoch {epoch}"),
            });
        }
        Ok((signer, line))
    }

    /// Erases every seed before `epoch` (moving to the next period's secret
    /// when the current one is used up); returns the seed of `epoch`.
    pub fn advance_to(&self, epoch: u64) -> Result<[u8; 32], KeyError> {
        let current = self.dir.join("epoch.secret");
        let (mut held, mut seed) = read_secret(&current)?;
        if epoch < held {
            return Err(KeyError::Erased { wanted: epoch, held });
        }
        let period_end =
            |e: u64| self.periods.iter().find(|p| (p.first..p.first + p.count).contains(&e)).map(|p| p.first + p.count);
        let Some(mut end) = period_end(held) else {
            return Err(KeyError::NotProvisioned { epoch, last: self.end_epoch() as i128 - 1 });
        };
        if epoch >= end {
            // The next period, if renewed: its secret takes the place of the
            // used-up one, whose bytes are overwritten first.
            let next = self.dir.join("epoch-next.secret");
            let (nheld, nseed) = match read_secret(&next) {
                Ok(s) => s,
                Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Err(KeyError::NotProvisioned { epoch, last: end as i128 - 1 })
                }
                Err(e) => return Err(e),
            };
            if nheld != end || epoch < nheld {
                return Err(KeyError::NotProvisioned { epoch, last: end as i128 - 1 });
            }
            write_secret(&current, nheld, &nseed)?;
            wipe(&next)?;
            (held, seed) = (nheld, nseed);
            end = period_end(held).ok_or(KeyError::NotProvisioned { epoch, last: self.end_epoch() as i128 - 1 })?;
            if epoch >= end {
                return Err(KeyError::NotProvisioned { epoch, last: end as i128 - 1 });
            }
        }
        if epoch > held {
            for _ in held..epoch {
                seed = next_seed(&seed);
            }
            write_secret(&current, epoch, &seed)?;
        }
        Ok(seed)
    }

    /// Erases the seed of `epoch` (and every earlier one): the host then
    /// holds `epoch + 1`'s, even past the provisioned period (a seed for an
    /// epoch without a certificate signs nothing anyone accepts).
    pub fn retire(&self, epoch: u64) -> Result<(), KeyError> {
        match self.advance_to(epoch + 1) {
            Ok(_) => Ok(()),
            Err(KeyError::NotProvisioned { .. }) => {
                let current = self.dir.join("epoch.secret");
                let (held, mut seed) = read_secret(&current)?;
                if held > epoch {
                    return Ok(());
                }
                for _ in held..=epoch {
                    seed = next_seed(&seed);
                }
                write_secret(&current, epoch + 1, &seed)
            }
            Err(e) => Err(e),
        }
    }

    /// Which epoch's seed the host holds now (nothing earlier can be signed).
    pub fn held_epoch(&self) -> Result<u64, KeyError> {
        Ok(read_secret(&self.dir.join("epoch.secret"))?.0)
    }
}

/// What `keys init` made.
#[derive(Debug)]
pub struct Provisioned {
    pub identity: Verifier,
    /// Where the identity secret was written.
    pub identity_secret: PathBuf,
    pub first_epoch: u64,
    pub epochs: u64,
    pub until: u64,
    pub bytes: u64,
}

/// `op-dbus keys init`: a new identity, and the epoch keys of `hours` from
/// now. The identity secret goes to `identity_out`, or `keys/identity.key`.
pub fn init(
    state_dir: &Path,
    origin: &str,
    epoch_seconds: u64,
    hours: u64,
    identity_out: Option<&Path>,
    now_s: u64,
) -> Result<Provisioned, KeyError> {
    let dir = keys_dir(state_dir);
    if dir.join("identity.pub").exists() {
        return Err(KeyError::Exists { dir });
    }
    create_key_dir(&dir)?;
    let identity = Signer::generate(origin)?;
    let secret_path = identity_out.map(Path::to_path_buf).unwrap_or_else(|| dir.join("identity.key"));
    write_private(&secret_path, format!("{}\n", identity.to_skey()).as_bytes())?;
    // The epoch in progress is the first: `t0` is now, to the second.
    let schedule = Schedule { t0: now_s, len: epoch_seconds };
    let count = (hours * 3600).div_ceil(epoch_seconds).max(1);
    let bytes = provision(&dir, &identity, schedule, 0, count, "epoch.secret")?;
    let pub_path = dir.join("identity.pub");
    write_atomic(&pub_path, format!("{}\n", identity.verifier().to_vkey()).as_bytes(), 0o644)?;
    Ok(Provisioned {
        identity: identity.verifier(),
        identity_secret: secret_path,
        first_epoch: 0,
        epochs: count,
        until: schedule.start(count),
        bytes,
    })
}

/// `op-dbus keys renew`: the next period, from where the provisioned ones end.
pub fn renew(state_dir: &Path, identity_secret: &Path, hours: u64) -> Result<Provisioned, KeyError> {
    let keys = EpochKeys::open(state_dir)?.ok_or_else(|| KeyError::Missing { dir: keys_dir(state_dir) })?;
    let text = fs::read_to_string(identity_secret).map_err(io_err(identity_secret))?;
    let identity = Signer::from_skey(text.trim())?;
    if identity.verifier() != *keys.identity() {
        return Err(KeyError::WrongIdentity { path: keys.dir.join("identity.pub") });
    }
    let dir = keys.dir.clone();
    if dir.join("epoch-next.secret").exists() {
        return Err(KeyError::Exists { dir: dir.join("epoch-next.secret") });
    }
    let first = keys.end_epoch();
    let count = (hours * 3600).div_ceil(keys.schedule.len).max(1);
    let bytes = provision(&dir, &identity, keys.schedule, first, count, "epoch-next.secret")?;
    Ok(Provisioned {
        identity: identity.verifier(),
        identity_secret: identity_secret.to_path_buf(),
        first_epoch: first,
        epochs: count,
        until: keys.schedule.start(first + count),
        bytes,
    })
}

/// Makes the certificates of epochs `first..first+count` and their secret.
/// The certificate file is complete and synced before the secret exists,
/// so a crash leaves either nothing usable or a whole period.
fn provision(
    dir: &Path,
    identity: &Signer,
    s: Schedule,
    first: u64,
    count: u64,
    secret_name: &str,
) -> Result<u64, KeyError> {
    let mut seed0 = [0u8; 32];
    getrandom::getrandom(&mut seed0)
        .map_err(|e| KeyError::Io { path: dir.to_path_buf(), source: io::Error::other(e.to_string()) })?;
    let mut out = Vec::with_capacity((CERTS_HEADER + count * CERT_LEN) as usize);
    out.extend_from_slice(CERTS_MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(s.len as u32).to_le_bytes());
    out.extend_from_slice(&s.t0.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let mut seed = seed0;
    for e in first..first + count {
        let key = Signer::from_seed(identity.name(), &epoch_secret(&seed))?;
        let pk = key.public_key();
        let start = s.start(e);
        out.extend_from_slice(&pk);
        out.extend_from_slice(&certify_epoch(identity, e, start, start + s.len, &pk));
        seed = next_seed(&seed);
    }
    seed.fill(0);
    let path = dir.join(format!("epochs-{first:020}.certs"));
    write_atomic(&path, &out, 0o644)?;
    write_secret_new(&dir.join(secret_name), first, &seed0)?;
    seed0.fill(0);
    Ok(out.len() as u64 + SECRET_LEN as u64)
}

fn create_key_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    set_nocow(dir);
    Ok(())
}

/// `chattr +C` on BTRFS (see the module comment); elsewhere a no-op.
fn set_nocow(dir: &Path) {
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    const FS_NOCOW_FL: libc::c_long = 0x0080_0000;
    if crate::layout::filesystem_type(dir) != "btrfs" {
        return;
    }
    let Ok(f) = File::open(dir) else { return };
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_long = 0;
    // SAFETY: both ioctls read or write one `long` at the pointer given,
    // which points at a live local; the fd is open for the call.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) == 0 {
            flags |= FS_NOCOW_FL;
            if libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &flags) != 0 {
                tracing::warn!(dir = %dir.display(), "cannot set NOCOW on the keys folder: erased seeds may stay in old BTRFS extents");
            }
        }
    }
}

fn secret_bytes(epoch: u64, seed: &[u8; 32]) -> [u8; SECRET_LEN] {
    let mut b = [0u8; SECRET_LEN];
    b[..8].copy_from_slice(&epoch.to_le_bytes());
    b[8..40].copy_from_slice(seed);
    let crc = crc32fast::hash(&b[..40]);
    b[40..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn read_secret(path: &Path) -> Result<(u64, [u8; 32]), KeyError> {
    let mut b = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut b)).map_err(io_err(path))?;
    if b.len() != SECRET_LEN || crc32fast::hash(&b[..40]).to_le_bytes() != b[40..44] {
        return Err(KeyError::Damaged {
            path: path.to_path_buf(),
            detail: "damaged epoch secret (bad length or CRC)".into(),
        });
    }
    Ok((u64::from_le_bytes(b[..8].try_into().expect("8")), b[8..40].try_into().expect("32")))
}

/// Overwrites the secret in place: same file, same offset, then fdatasync.
fn write_secret(path: &Path, epoch: u64, seed: &[u8; 32]) -> Result<(), KeyError> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    let mut b = secret_bytes(epoch, seed);
    let r = f.write_all_at(&b, 0).and_then(|()| f.sync_data());
    b.fill(0);
    r.map_err(io_err(path))
}

fn write_secret_new(path: &Path, epoch: u64, seed: &[u8; 32]) -> Result<(), KeyError> {
    let mut b = secret_bytes(epoch, seed);
    let r = write_private(path, &b);
    b.fill(0);
    r
}

/// Overwrites a secret file with zeros (synced) before removing it.
fn wipe(path: &Path) -> Result<(), KeyError> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len() as usize;
    f.write_all_at(&vec![0u8; len], 0).and_then(|()| f.sync_data()).map_err(io_err(path))?;
    fs::remove_file(path).map_err(io_err(path))
}

/// A new file, mode 0600, written and synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(path))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        sync_folder(parent)?;
    }
    Ok(())
}

/// Temporary file, fdatasync, rename, folder fsync.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_data()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_folder(path.parent().unwrap_or(Path::new(".")))
}

fn sync_folder(dir: &Path) -> Result<(), KeyError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::checkpoint::epoch_cert_text;

    fn provisioned(epoch_seconds: u64, hours: u64) -> (tempfile::TempDir, EpochKeys) {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "example.org/log", epoch_seconds, hours, None, 1_000_000).unwrap();
        let keys = EpochKeys::open(dir.path()).unwrap().unwrap();
        (dir, keys)
    }

    #[test]
    fn every_certificate_verifies_under_the_identity_and_matches_the_seed_chain() {
        let (_d, keys) = provisioned(60, 1);
        assert_eq!(keys.end_epoch(), 60);
        assert_eq!(keys.provisioned_until(), 1_000_000 + 3600);
        for e in 0..60 {
            let line = keys.epoch_line(e).unwrap();
            assert_eq!((line.start, line.end), (1_000_000 + 60 * e, 1_000_060 + 60 * e));
            let text = epoch_cert_text(keys.origin(), e, line.start, line.end, &line.public_key);
            let sig = crate::note::SignatureLine::parse(&format!(
                "— {} {}",
                keys.origin(),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &line.cert_signature)
            ))
            .unwrap();
            keys.identity().verify(text.as_bytes(), &sig).unwrap();
        }
        // Signing walks the chain forward; the key is the certified one.
        let (s, line) = keys.signer_for(7).unwrap();
        assert_eq!(s.public_key(), line.public_key);
        assert_eq!(keys.held_epoch().unwrap(), 7);
    }

    #[test]
    fn an_erased_epoch_cannot_be_signed_again_and_the_file_holds_only_the_new_seed() {
        let (d, keys) = provisioned(60, 1);
        let path = keys_dir(d.path()).join("epoch.secret");
        let before = fs::read(&path).unwrap();
        keys.signer_for(3).unwrap();
        let after = fs::read(&path).unwrap();
        assert_ne!(before[8..40], after[8..40]);
        assert!(matches!(keys.signer_for(2), Err(KeyError::Erased { wanted: 2, held: 3 })));
        // The seed of epoch 3 is the seed of epoch 0 moved forward three times.
        let s0: [u8; 32] = before[8..40].try_into().unwrap();
        assert_eq!(next_seed(&next_seed(&next_seed(&s0)))[..], after[8..40]);
        assert!(matches!(keys.signer_for(60), Err(KeyError::NotProvisioned { epoch: 60, .. })));
        // Retiring the last epoch leaves nothing that signs.
        keys.retire(59).unwrap();
        assert_eq!(keys.held_epoch().unwrap(), 60);
        assert!(keys.signer_for(59).is_err());
    }

    #[test]
    fn a_renewed_period_continues_the_schedule_and_its_secret_takes_over() {
        let (d, _keys) = provisioned(600, 1);
        let id = keys_dir(d.path()).join("identity.key");
        let p = renew(d.path(), &id, 1).unwrap();
        assert_eq!((p.first_epoch, p.epochs), (6, 6));
        let keys = EpochKeys::open(d.path()).unwrap().unwrap();
        assert_eq!(keys.end_epoch(), 12);
        let (s, line) = keys.signer_for(8).unwrap();
        assert_eq!(s.public_key(), line.public_key);
        assert!(!keys_dir(d.path()).join("epoch-next.secret").exists());
        assert!(matches!(keys.signer_for(5), Err(KeyError::Erased { .. })));
        // Another identity cannot renew.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), "example.org/log", 600, 1, None, 5).unwrap();
        let err = renew(d.path(), &keys_dir(other.path()).join("identity.key"), 1).unwrap_err();
        assert!(matches!(err, KeyError::WrongIdentity { .. }), "{err}");
    }

    #[test]
    fn damaged_files_are_errors() {
        let (d, keys) = provisioned(60, 1);
        let path = keys_dir(d.path()).join("epoch.secret");
        let mut b = fs::read(&path).unwrap();
        b[9] ^= 1;
        fs::write(&path, &b).unwrap();
        assert!(matches!(keys.signer_for(1), Err(KeyError::Damaged { .. })));
        let certs = keys_dir(d.path()).join(format!("epochs-{:020}.certs", 0));
        let len = fs::metadata(&certs).unwrap().len();
        OpenOptions::new().write(true).open(&certs).unwrap().set_len(len - 1).unwrap();
        assert!(matches!(EpochKeys::open(d.path()), Err(KeyError::Damaged { .. })));
        assert!(matches!(init(d.path(), "x", 60, 1, None, 0), Err(KeyError::Exists { .. })));
    }
}
