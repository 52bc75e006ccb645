//! The Zenoh session a bridge runs on: peer mode, TCP only, no scouting, only the endpoints
//! given.

use crate::Error;
use zenoh::Wait;

/// Where a bridge's Zenoh session connects and listens (`tcp/ADDRESS:PORT`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Endpoints to connect to (retried in the background until they answer, and after a
    /// cut).
    #[serde(default)]
    pub connect: Vec<String>,
    /// Endpoints to listen on.
    #[serde(default)]
    pub listen: Vec<String>,
}

/// The session's configuration: multicast and gossip scouting off (the session talks only to
/// the endpoints given), no listening unless asked, connection attempts retried in the
/// background rather than failing the start.
pub fn config(endpoints: &Endpoints) -> Result<zenoh::Config, Error> {
    if endpoints.connect.is_empty() && endpoints.listen.is_empty() {
        return Err(Error::Config(
            "give the bridge somewhere to meet its peer: --connect tcp/HOST:PORT (the other \
             side's --listen) or --listen tcp/ADDRESS:PORT"
                .into(),
        ));
    }
    for e in endpoints.connect.iter().chain(&endpoints.listen) {
        if !e.starts_with("tcp/") {
            return Err(Error::Config(format!(
                "endpoint {e:?}: this bridge speaks TCP only (tcp/HOST:PORT)"
            )));
        }
    }
    let mut c = zenoh::Config::default();
    let json = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
    let set = |c: &mut zenoh::Config, key: &str, value: &str| {
        c.insert_json5(key, value)
            .map_err(|e| Error::Config(format!("zenoh configuration {key}={value}: {e}")))
    };
    set(&mut c, "mode", "\"peer\"")?;
    set(&mut c, "scouting/multicast/enabled", "false")?;
    set(&mut c, "scouting/gossip/enabled", "false")?;
    set(&mut c, "connect/endpoints", &json(&endpoints.connect))?;
    set(&mut c, "listen/endpoints", &json(&endpoints.listen))?;
    // Start even when the peer is not up yet; connect when it comes (and again after a cut).
    set(&mut c, "connect/timeout_ms", "-1")?;
    set(&mut c, "connect/exit_on_failure", "false")?;
    // A blocked publication (the importer's consumer is slow) waits this long for room before
    // Zenoh closes the session; the bridge's own acknowledgements recover from a close, so
    // this only bounds how long a stuck peer holds the link.
    set(
        &mut c,
        "transport/link/tx/queue/congestion_control/block/wait_before_close",
        "60000000",
    )?;
    Ok(c)
}

/// Opens the session.
pub fn open(endpoints: &Endpoints) -> Result<zenoh::Session, Error> {
    zenoh::open(config(endpoints)?)
        .wait()
        .map_err(|e| Error::Zenoh(format!("opening the session: {e}")))
}
