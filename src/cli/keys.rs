//! `op-dbus keys`: make, show and renew the signing keys (docs/FORMAT.md, "Keys").

use super::{load_config, Failure, Global, KeysCmd};
use crate::config::Overrides;
use crate::proof::keys::{self, EpochKeys};

pub(super) fn run(global: &Global, c: KeysCmd) -> Result<u8, Failure> {
    let cfg = load_config(global, Overrides::default())?;
    let state = cfg.state_dir.clone();
    let now = (crate::codec::now_ns() / 1_000_000_000) as u64;
    match c {
        KeysCmd::Init { origin, epoch_seconds, hours, identity_out } => {
            let origin = match origin.or_else(|| (!cfg.proof.origin.is_empty()).then(|| cfg.proof.origin.clone())) {
                Some(o) if crate::note::valid_key_name(&o) => o,
                Some(o) => {
                    return Err(Failure::usage(anyhow::anyhow!("invalid --origin {o:?}: a name without spaces or +")))
                }
                None => keys::default_origin().map_err(Failure::runtime)?,
            };
            let secs = epoch_seconds.unwrap_or(cfg.proof.epoch_seconds);
            if !(1..=86_400).contains(&secs) {
                return Err(Failure::usage(anyhow::anyhow!("invalid --epoch-seconds {secs}: allowed: 1 to 86400")));
            }
            let hours = hours.unwrap_or(cfg.proof.provision_hours);
            std::fs::create_dir_all(&state).map_err(Failure::runtime)?;
            let started = std::time::Instant::now();
            let p = keys::init(&state, &origin, secs, hours, identity_out.as_deref(), now).map_err(key_failure)?;
            println!("identity    {}", p.identity.to_vkey());
            println!(
                "epochs      {} of {secs} s, until {} ({} bytes, {:.2}s)",
                p.epochs,
                time(p.until),
                p.bytes,
                started.elapsed().as_secs_f64()
            );
            println!("secret      {}", p.identity_secret.display());
            println!("next        move the identity secret off this host; it is needed only for `op-dbus keys renew`");
            Ok(0)
        }
        KeysCmd::ExportPublic => {
            let k = open(&state)?;
            println!("{}", k.identity().to_vkey());
            Ok(0)
        }
        KeysCmd::Renew { identity, hours } => {
            let p = keys::renew(&state, &identity, hours.unwrap_or(cfg.proof.provision_hours)).map_err(key_failure)?;
            println!(
                "renewed     epochs {}..{} until {} ({} bytes)",
                p.first_epoch,
                p.first_epoch + p.epochs,
                time(p.until),
                p.bytes
            );
            Ok(0)
        }
        KeysCmd::Status(a) => {
            let k = open(&state)?;
            let until = k.provisioned_until();
            let left = until as i64 - now as i64;
            let due = left < cfg.proof.renew_warning.as_secs() as i64;
            let held = k.held_epoch().ok();
            if a.json {
                let v = serde_json::json!({
                    "identity": k.identity().to_vkey(),
                    "origin": k.origin(),
                    "epoch_seconds": k.schedule().len,
                    "first_epoch_start": k.schedule().t0,
                    "provisioned_until": until,
                    "seconds_left": left,
                    "renewal_due": due,
                    "held_epoch": held,
                    "identity_secret_on_host": k.identity_secret_on_host(),
                });
                println!("{v}");
            } else {
                println!("identity    {}", k.identity().to_vkey());
                println!(
                    "epochs      {} s each, provisioned until {} ({})",
                    k.schedule().len,
                    time(until),
                    left_text(left)
                );
                if due {
                    println!("renewal     DUE: run `op-dbus keys renew --identity FILE`");
                }
                println!(
                    "held        {}",
                    held.map_or("damaged or missing".into(), |e| format!("epoch {e} (every earlier secret is erased)"))
                );
                if k.identity_secret_on_host() {
                    println!("warning     the identity secret is on this host (keys/identity.key): move it off, or root here can certify keys for past epochs");
                }
            }
            Ok(0)
        }
    }
}

fn open(state: &std::path::Path) -> Result<EpochKeys, Failure> {
    EpochKeys::open(state).map_err(key_failure)?.ok_or_else(|| {
        Failure::usage(anyhow::anyhow!("no keys in {}: run `op-dbus keys init`", keys::keys_dir(state).display()))
    })
}

fn key_failure(e: keys::KeyError) -> Failure {
    match e {
        keys::KeyError::Exists { .. } | keys::KeyError::Missing { .. } | keys::KeyError::WrongIdentity { .. } => {
            Failure::usage(e)
        }
        _ => Failure::runtime(e),
    }
}

pub(super) fn time(unix_s: u64) -> String {
    chrono::DateTime::from_timestamp(unix_s as i64, 0).map_or(unix_s.to_string(), |t| t.to_rfc3339())
}

pub(super) fn left_text(s: i64) -> String {
    if s <= 0 {
        "ENDED: nothing can be signed".into()
    } else {
        format!("{}d {}h left", s / 86_400, (s % 86_400) / 3600)
    }
}
