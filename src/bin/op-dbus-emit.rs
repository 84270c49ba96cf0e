//! op-dbus-emit: puts known traffic on a bus, for `make demo`, the tests
//! and the load harness.
//!
//! - `sample`: a realistic burst (systemd JobRemoved and PropertiesChanged,
//!   logind SessionNew, NetworkManager StateChanged), under their well-known
//!   names when the bus lets us own them;
//! - `types`: one signal per D-Bus type family, every basic type, variants,
//!   dicts, structs, nested arrays, a unix fd;
//! - `names`: a signal before, while and after owning a well-known name;
//! - `hostile`: a body near the size given, 60 nested variants, an empty
//!   body, an unusual signature;
//! - `load`: N signals `org.opdbus.Load.Tick(t seq, s payload)` at a fixed
//!   rate or as fast as the bus takes them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use zbus::{ObjectPath, Signature, Structure, Variant};

#[derive(Parser)]
#[command(name = "op-dbus-emit", about = "Emit known D-Bus traffic (demo, tests, load)")]
struct Cli {
    /// Bus address (unix:path=...), or system / session
    #[arg(long)]
    bus: String,
    /// Stay connected this long after the last signal (a sender that exits
    /// at once may be gone before a recorder asks for its credentials)
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    Sample,
    Types,
    Names {
        /// The well-known name to own for the middle signal
        name: String,
    },
    Hostile {
        /// Size of the large body, in bytes
        #[arg(long, default_value_t = 8 << 20)]
        big: usize,
    },
    Load {
        #[arg(long)]
        count: u64,
        /// Signals per second; 0 = as fast as the bus takes them
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Payload bytes per signal
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let addr = op_dbus::config::BusAddress::parse(&cli.bus).ok_or_else(|| anyhow::anyhow!("bad --bus"))?;
        let conn = op_dbus::bus::connect(&addr).await?;
        match cli.what {
            What::Sample => sample(&addr).await?,
            What::Types => types(&conn).await?,
            What::Names { name } => names(&conn, &name).await?,
            What::Hostile { big } => hostile(&conn, big).await?,
            What::Load { count, rate, payload } => load(&conn, count, rate, payload).await?,
        }
        // Make sure everything left the socket before the process exits.
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        dbus.get_id().await?;
        tokio::time::sleep(std::time::Duration::from_millis(cli.linger_ms)).await;
        anyhow::Ok(())
    })
}

async fn try_own(conn: &zbus::Connection, name: &str) -> bool {
    let flags = zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
    matches!(conn.request_name_with_flags(name, flags).await, Ok(zbus::fdo::RequestNameReply::PrimaryOwner))
}

/// One connection per service, as on a real host, so that each signal is
/// attributed to its own well-known name.
async fn sample(addr: &op_dbus::config::BusAddress) -> anyhow::Result<()> {
    let service = |name: &'static str| {
        let addr = addr.clone();
        async move {
            let conn = op_dbus::bus::connect(&addr).await?;
            if !try_own(&conn, name).await {
                eprintln!("op-dbus-emit: {name} is taken on this bus; emitting without it");
            }
            anyhow::Ok(conn)
        }
    };
    let (sd_conn, login_conn, nm_conn) = (
        service("org.freedesktop.systemd1").await?,
        service("org.freedesktop.login1").await?,
        service("org.freedesktop.NetworkManager").await?,
    );
    let sd = "/org/freedesktop/systemd1";
    for (i, unit) in ["nginx.service", "sshd.service", "cron.service"].iter().enumerate() {
        let job = ObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{}", 100 + i))?;
        sd_conn
            .emit_signal(
                None::<&str>,
                sd,
                "org.freedesktop.systemd1.Manager",
                "JobRemoved",
                &(100u32 + i as u32, job, *unit, "done"),
            )
            .await?;
        let mut changed: HashMap<&str, Variant<'_>> = HashMap::new();
        changed.insert("ActiveState", Variant::from("active"));
        changed.insert("SubState", Variant::from("running"));
        changed.insert("ActiveEnterTimestamp", Variant::from(1_700_000_000_000_000u64 + i as u64));
        let path = format!("/org/freedesktop/systemd1/unit/{}", unit.replace('.', "_2e"));
        sd_conn
            .emit_signal(
                None::<&str>,
                path.as_str(),
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
                &("org.freedesktop.systemd1.Unit", changed, Vec::<String>::new()),
            )
            .await?;
    }
    let session = ObjectPath::try_from("/org/freedesktop/login1/session/_32")?;
    login_conn
        .emit_signal(
            None::<&str>,
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "SessionNew",
            &("2", session),
        )
        .await?;
    nm_conn
        .emit_signal(
            None::<&str>,
            "/org/freedesktop/NetworkManager",
            "org.freedesktop.NetworkManager",
            "StateChanged",
            &(70u32,),
        )
        .await?;
    for conn in [&sd_conn, &login_conn, &nm_conn] {
        zbus::fdo::DBusProxy::new(conn).await?.get_id().await?;
    }
    Ok(())
}

const T: &str = "org.opdbus.Test";
const P: &str = "/org/opdbus/Test";

async fn types(c: &zbus::Connection) -> anyhow::Result<()> {
    c.emit_signal(
        None::<&str>,
        P,
        T,
        "Basic",
        &(255u8, true, -2i16, 3u16, -4i32, 5u32, -6i64, u64::MAX, 8.5f64, "str"),
    )
    .await?;
    let g = Signature::try_from("a{sv}").map_err(zbus::Error::from)?;
    c.emit_signal(None::<&str>, P, T, "Names", &(ObjectPath::try_from("/a/b")?, g)).await?;
    let mut asv: HashMap<&str, Variant<'_>> = HashMap::new();
    asv.insert("int", Variant::from(42i32));
    asv.insert("list", Variant::from(vec!["a", "b"]));
    asv.insert("nested", Variant::new(Variant::from(1u8)));
    c.emit_signal(None::<&str>, P, T, "Dict", &(asv,)).await?;
    let st = Structure::builder().add_field(1u32).add_field("two").add_field(Variant::from(3.0f64)).build()?;
    let one_struct = Structure::builder().append_field(Variant::Structure(st)).build()?;
    c.emit_signal(None::<&str>, P, T, "Struct", &one_struct).await?;
    c.emit_signal(None::<&str>, P, T, "Nested", &(vec![vec![1u32, 2], vec![], vec![3]], vec![b"ab".to_vec(), vec![]]))
        .await?;
    let f = std::fs::File::open("/dev/null")?;
    c.emit_signal(None::<&str>, P, T, "Fd", &(zbus::Fd::from(&f), "after")).await?;
    c.emit_signal(None::<&str>, P, T, "Empty", &()).await?;
    Ok(())
}

async fn names(c: &zbus::Connection, name: &str) -> anyhow::Result<()> {
    c.emit_signal(None::<&str>, P, T, "Before", &()).await?;
    anyhow::ensure!(try_own(c, name).await, "could not own {name}");
    c.emit_signal(None::<&str>, P, T, "While", &()).await?;
    c.release_name(name).await?;
    c.emit_signal(None::<&str>, P, T, "After", &()).await?;
    Ok(())
}

async fn hostile(c: &zbus::Connection, big: usize) -> anyhow::Result<()> {
    c.emit_signal(None::<&str>, P, T, "Big", &(vec![0xabu8; big],)).await?;
    // 60 nested variants around a u32: zbus itself will not decode this deep,
    // dbus-daemon forwards it, op-dbus must record it. Built by hand.
    let mut body = Vec::new();
    for _ in 0..60 {
        body.extend_from_slice(&[1, b'v', 0]);
    }
    body.extend_from_slice(&[1, b'u', 0]);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    body.extend_from_slice(&7u32.to_le_bytes());
    let msg = zbus::Message::signal(P, T, "Deep");
    // SAFETY: the bytes above are a valid little-endian encoding of "v".
    let msg = unsafe { msg.build_raw_body(&body, "v", vec![])? };
    c.send(&msg).await?;
    c.emit_signal(None::<&str>, P, T, "Empty", &()).await?;
    let mut odd: HashMap<ObjectPath<'_>, HashMap<String, HashMap<String, Variant<'_>>>> = HashMap::new();
    let mut inner = HashMap::new();
    inner.insert("k".to_string(), Variant::from(vec![(1u8, Variant::from(true))]));
    let mut mid = HashMap::new();
    mid.insert("m".to_string(), inner);
    odd.insert(ObjectPath::try_from("/o")?, mid);
    c.emit_signal(None::<&str>, P, T, "Odd", &(odd, vec![(0u8, Variant::from(-1i64))])).await?;
    Ok(())
}

async fn load(c: &zbus::Connection, count: u64, rate: u64, payload: usize) -> anyhow::Result<()> {
    let text = "x".repeat(payload);
    let start = Instant::now();
    for seq in 0..count {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        c.emit_signal(None::<&str>, "/org/opdbus/Load", "org.opdbus.Load", "Tick", &(seq, text.as_str())).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("op-dbus-emit: {count} signals in {secs:.3}s ({:.0}/s)", count as f64 / secs);
    Ok(())
}
