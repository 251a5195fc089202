//! Every log line a test process writes, captured for scanning (no secret, PAN or full email may
//! ever reach one): the process-wide subscriber at TRACE, in the platform's own JSON line format.
//! One per test process — nextest runs each test in a process of its own.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// The captured output (cheap to clone; every clone sees the same lines).
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Installs the process-wide subscriber (every level, JSON lines as `service` writes them) and
    /// answers what it captures. Panics when a subscriber is already installed.
    #[must_use]
    pub fn install(service: &'static str) -> Self {
        let capture = Self::default();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("trace"))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(bank_platform::telemetry::JsonLines { service })
                    .with_writer(capture.clone()),
            )
            .init();
        capture
    }

    /// Everything written so far, as text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
