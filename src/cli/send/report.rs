//! The JSON Lines report: one line per record read, in the order outcomes became known, and the set of records a
//! previous report says need not be sent again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a record of the input ended, in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ending {
    Delivered,
    Duplicate,
    Rejected,
    Invalid,
    Failed,
    /// Sent, but the stream ended before its result came: it may or may not have been delivered.
    Unanswered,
}

impl Ending {
    /// Whether the record is known to be in Groove.
    pub fn is_delivered(self) -> bool {
        matches!(self, Ending::Delivered | Ending::Duplicate)
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub line: u64,
    pub id: String,
    pub outcome: Ending,
    /// Groove's HTTP status, when a call was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// For an invalid record: the field at fault.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// Taken over from the report given to `--resume`, not sent this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

impl Entry {
    /// A record that got no result from the server: refused here before it was sent, or left unanswered.
    pub fn unsent(line: u64, id: String, outcome: Ending, error: impl Into<String>) -> Self {
        Entry {
            line,
            id,
            outcome,
            http_status: None,
            attempts: 0,
            error: error.into(),
            field: String::new(),
            resumed: false,
        }
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Writes entries as they come.
pub struct ReportWriter {
    out: Option<BufWriter<File>>,
}

impl ReportWriter {
    /// A report to `path`, or none.
    pub fn create(path: Option<&Path>) -> std::io::Result<Self> {
        let out = path
            .map(|path| File::create(path).map(BufWriter::new))
            .transpose()?;
        Ok(ReportWriter { out })
    }

    pub fn write(&mut self, entry: &Entry) -> std::io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        serde_json::to_writer(&mut *out, entry)?;
        out.write_all(b"\n")
    }

    pub fn finish(self) -> std::io::Result<()> {
        match self.out {
            Some(mut out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// The records a previous report says are in Groove, by id, with their entries (which the new report repeats).
pub fn delivered_in(path: &Path) -> Result<HashMap<String, Entry>, String> {
    let file =
        File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut delivered = HashMap::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_str(&line).map_err(|error| {
            format!(
                "{} line {}: not a report entry: {error}",
                path.display(),
                index + 1
            )
        })?;
        if entry.outcome.is_delivered() {
            delivered.insert(entry.id.clone(), entry);
        }
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_what_was_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.jsonl");
        let mut writer = ReportWriter::create(Some(&path)).unwrap();
        for (line, id, outcome) in [
            (1, "a", Ending::Delivered),
            (2, "b", Ending::Failed),
            (3, "c", Ending::Duplicate),
            (4, "d", Ending::Unanswered),
        ] {
            writer
                .write(&Entry {
                    line,
                    id: id.into(),
                    outcome,
                    http_status: None,
                    attempts: 1,
                    error: String::new(),
                    field: String::new(),
                    resumed: false,
                })
                .unwrap();
        }
        writer.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"line":1,"id":"a","outcome":"delivered","attempts":1}"#
        );
        let delivered = delivered_in(&path).unwrap();
        let mut ids: Vec<&str> = delivered.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "c"]);

        std::fs::write(&path, "{\"line\":1}\n").unwrap();
        let error = delivered_in(&path).unwrap_err();
        assert!(error.contains("line 1: not a report entry"), "{error}");
    }
}
