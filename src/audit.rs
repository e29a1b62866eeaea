//! The audit log: one JSON line per decision (registry and repository API requests, token
//! grants and refusals): time, request id, client address, credential kind and name,
//! repository, action, outcome, status and reason. Never a secret: names of tokens and keys
//! are not secrets, their values never reach this module.
//!
//! Lines go to a writer thread through a bounded queue, so the request path never waits on
//! the disk; when the writer falls behind, lines are dropped and counted
//! (`scopegate_audit_dropped_total`). The writer wakes every 50 ms and writes what has
//! queued in one go (no wake-up per request); dropping the [`Auditor`] writes the rest.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use prometheus::IntCounter;
use serde::Serialize;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl AuditOutput {
    pub fn parse(s: &str) -> AuditOutput {
        match s {
            "off" => AuditOutput::Off,
            "stdout" => AuditOutput::Stdout,
            "stderr" => AuditOutput::Stderr,
            path => AuditOutput::File(PathBuf::from(path)),
        }
    }
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub time: &'a str,
    pub request_id: &'a str,
    #[serde(serialize_with = "as_text")]
    pub client: std::net::IpAddr,
    pub endpoint: &'static str,
    pub method: &'a str,
    pub credential: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    pub outcome: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// An address as its usual text, written straight into the line.
fn as_text<S: serde::Serializer>(ip: &std::net::IpAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(ip)
}

/// Room for a typical line, so one is built in one allocation.
const LINE: usize = 384;

/// Lines buffered between the request path and the writer.
const QUEUE: usize = 65_536;

pub struct Auditor {
    tx: Option<SyncSender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    dropped: IntCounter,
}

/// How often the writer looks for queued lines.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").field("on", &self.tx.is_some()).finish()
    }
}

impl Auditor {
    pub fn new(output: &AuditOutput, dropped: IntCounter) -> std::io::Result<Auditor> {
        let sink: Box<dyn Write + Send> = match output {
            AuditOutput::Off => return Ok(Auditor { tx: None, writer: None, dropped }),
            AuditOutput::Stdout => Box::new(std::io::stdout()),
            AuditOutput::Stderr => Box::new(std::io::stderr()),
            AuditOutput::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let writer = std::thread::Builder::new().name("scopegate-audit".into()).spawn(move || {
            use std::sync::mpsc::TryRecvError;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, sink);
            loop {
                let mut closed = false;
                loop {
                    match rx.try_recv() {
                        Ok(line) => {
                            let _ = out.write_all(&line);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let _ = out.flush();
                if closed {
                    return;
                }
                std::thread::sleep(WRITE_EVERY);
            }
        })?;
        Ok(Auditor { tx: Some(tx), writer: Some(writer), dropped })
    }

    /// Whether lines are written at all (callers skip building events when not).
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, e: &Event<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(LINE);
        if serde_json::to_writer(&mut line, e).is_err() {
            return;
        }
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

impl Drop for Auditor {
    /// Writes what is still queued before the auditor goes (a reload, or the end).
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
