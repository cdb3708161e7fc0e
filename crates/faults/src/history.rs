//! The client history: one JSON line per operation, written as operations
//! complete (so a killed run still leaves its history), and kept in memory
//! for the checkers.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

/// What the client knows about an operation's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200: applied and durable on the node that answered.
    Ok,
    /// Definitely not applied: a 4xx answer or a connection that never
    /// opened.
    Fail,
    /// May or may not have been applied, possibly much later (a time-out, a
    /// 5xx, a connection cut after the request was sent, a paused node that
    /// resumes). Checkers treat it as "applied at any time, or never".
    Unknown,
}

/// One operation. Each eventual op type goes to its own namespace (see
/// [`crate::run`]); the `lin_*` ops go to the strong namespace
/// [`crate::strong::NS_STRONG`] and `lock` to its lock
/// [`crate::strong::LOCK_NAME`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    /// lww put; values are unique within a run, so the final value names
    /// the write that won.
    Put { key: String, value: String },
    /// lww delete.
    Delete { key: String },
    /// counter increment (may be negative).
    Incr { key: String, amount: i64 },
    /// set add.
    Add { key: String, member: String },
    /// set remove without context: removes every add the node has observed.
    Remove { key: String, member: String },
    /// Linearizable read of a strong register (the value is in
    /// [`Record::answer`]).
    LinRead { key: String },
    /// Strong put; values are unique within a run.
    LinWrite { key: String, value: String },
    /// Strong compare-and-swap: set `value` if the register holds
    /// `expected` (`None`: the key must be absent).
    LinCas { key: String, expected: Option<String>, value: String },
    /// Exclusive acquisition of lock `key` under `lease` (the fencing token
    /// is in [`Record::answer`]).
    Lock { key: String, lease: u64 },
}

impl ClientOp {
    pub fn key(&self) -> &str {
        match self {
            ClientOp::Put { key, .. }
            | ClientOp::Delete { key }
            | ClientOp::Incr { key, .. }
            | ClientOp::Add { key, .. }
            | ClientOp::Remove { key, .. }
            | ClientOp::LinRead { key }
            | ClientOp::LinWrite { key, .. }
            | ClientOp::LinCas { key, .. }
            | ClientOp::Lock { key, .. } => key,
        }
    }
}

/// The HLC timestamp of an acknowledged write, from its receipt. Field
/// order gives the order LWW uses: physical, logical, then node id (16 hex
/// digits, so string order is numeric order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hlc {
    pub physical_us: u64,
    pub logical: u32,
    pub node: String,
}

/// What an `ok` strong operation answered, beyond "done".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A linearizable read: the value, `None` when the key was absent (404
    /// `not_found`).
    Read(Option<String>),
    /// A compare-and-swap: whether it swapped.
    Cas(bool),
    /// A lock grant: its fencing token.
    Token(u64),
}

/// One line of the history file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub worker: u32,
    /// Index of the node the request went to (0-based).
    pub node: usize,
    #[serde(flatten)]
    pub op: ClientOp,
    /// Nanoseconds since the run started, before the request was sent.
    pub invoke_ns: u64,
    /// Nanoseconds since the run started, when the answer (or the give-up)
    /// came back.
    pub complete_ns: u64,
    pub result: Outcome,
    /// The receipt's timestamp, for `ok` writes whose receipt parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Hlc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What an ok strong op answered (read value, swapped, fencing token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

/// A shared, append-only history: the file (JSON lines) and a copy in memory.
pub struct HistoryLog {
    inner: Mutex<(BufWriter<File>, Vec<Record>)>,
}

impl HistoryLog {
    pub fn create(path: &Path) -> std::io::Result<HistoryLog> {
        let file = File::create(path)?;
        Ok(HistoryLog { inner: Mutex::new((BufWriter::new(file), Vec::new())) })
    }

    /// Append one record. A write error to the file is returned, but the
    /// record is kept in memory either way so checking still happens.
    pub fn push(&self, record: Record) -> std::io::Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let line = serde_json::to_string(&record).map_err(std::io::Error::other);
        guard.1.push(record);
        let line = line?;
        writeln!(guard.0, "{line}")
    }

    /// Flush the file and hand back every record, in completion order.
    pub fn finish(self) -> std::io::Result<Vec<Record>> {
        let (mut file, records) = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        file.flush()?;
        Ok(records)
    }
}

/// Read a history file back (for replaying a check offline).
pub fn read_history(path: &Path) -> Result<Vec<Record>, HistoryReadError> {
    let text = std::fs::read_to_string(path).map_err(HistoryReadError::Io)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| HistoryReadError::Line { line: i + 1, reason: e.to_string() })
        })
        .collect()
}

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryReadError {
    #[error("cannot read the history: {0}")]
    Io(std::io::Error),
    #[error("history line {line}: {reason}")]
    Line { line: usize, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let log = HistoryLog::create(&path).unwrap();
        let r = Record {
            worker: 1,
            node: 2,
            op: ClientOp::Incr { key: "c0".into(), amount: -3 },
            invoke_ns: 5,
            complete_ns: 9,
            result: Outcome::Unknown,
            ts: None,
            error: Some("timeout".into()),
            answer: None,
        };
        log.push(r.clone()).unwrap();
        assert_eq!(log.finish().unwrap(), vec![r.clone()]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"op\":\"incr\"") && text.contains("\"result\":\"unknown\""), "{text}");
        assert_eq!(read_history(&path).unwrap(), vec![r]);
    }

    #[test]
    fn strong_records_keep_their_answer_through_a_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let log = HistoryLog::create(&path).unwrap();
        let base = Record {
            worker: 100,
            node: 4,
            op: ClientOp::LinRead { key: "r3".into() },
            invoke_ns: 5,
            complete_ns: 9,
            result: Outcome::Ok,
            ts: None,
            error: None,
            answer: Some(Answer::Read(None)),
        };
        let cas = Record {
            op: ClientOp::LinCas { key: "r3".into(), expected: None, value: "w100-1".into() },
            answer: Some(Answer::Cas(true)),
            ..base.clone()
        };
        let lock = Record {
            op: ClientOp::Lock { key: "fence".into(), lease: 77 },
            answer: Some(Answer::Token(12)),
            ..base.clone()
        };
        for r in [&base, &cas, &lock] {
            log.push(r.clone()).unwrap();
        }
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"read\":null") && text.contains("\"token\":12"), "{text}");
        assert_eq!(read_history(&path).unwrap(), vec![base, cas, lock]);
    }
}
