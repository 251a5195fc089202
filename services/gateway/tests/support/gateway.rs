//! Spawning the gateway for tests: an isolated Redis namespace, identity (when given) as the
//! upstream and the token authority, readiness following only the upstreams a test runs.

use bank_testkit::{Options, TestIdentity};

/// Options for a gateway in front of `identity` (or of nothing).
pub(crate) fn options(identity: Option<&TestIdentity>) -> Options {
    let options = Options::default().database(false).redis(true).set("edge.hsts", false);
    match identity {
        Some(identity) => identity
            .trust(options)
            .set("upstreams.identity", identity.url())
            .set("upstreams.required_for_readiness", vec!["identity".to_owned()]),
        None => options.set("upstreams.required_for_readiness", Vec::<String>::new()),
    }
}
