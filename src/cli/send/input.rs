//! Reading a JSON Lines or CSV file into records: every line becomes a record with an id, or a reason, naming
//! its line, why it cannot be sent. Nothing in the input stops the reading but an I/O error.

use std::io::{BufRead, BufReader, Read};

use serde_json::{Map, Value};

/// How the input is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON object per line; empty lines are skipped.
    Jsonl,
    /// A header row naming the columns, then one record per row; an empty cell leaves its field out.
    Csv,
}

/// One record of the input, by its line number (1-based; for CSV the line the row starts on).
#[derive(Debug)]
pub struct InputRecord {
    pub line: u64,
    pub read: Result<Readable, String>,
}

/// A record ready to send.
#[derive(Debug)]
pub struct Readable {
    pub id: String,
    /// The record as JSON text of an object.
    pub json: Vec<u8>,
}

/// Where each record's id comes from.
#[derive(Clone, Debug)]
pub enum IdSource {
    /// A top-level field (JSON Lines) or a column (CSV); a string, or a number written as text.
    Field(String),
    /// The prefix followed by the line number.
    LineNumber { prefix: String },
}

impl IdSource {
    fn id(&self, line: u64, fields: &Map<String, Value>) -> Result<String, String> {
        match self {
            IdSource::LineNumber { prefix } => Ok(format!("{prefix}{line}")),
            IdSource::Field(name) => match fields.get(name) {
                Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
                Some(Value::Number(number)) => Ok(number.to_string()),
                Some(Value::String(_)) | None => Err(format!(
                    "line {line}: id field \"{name}\" is missing or empty"
                )),
                Some(_) => Err(format!(
                    "line {line}: id field \"{name}\" must be a string or a number"
                )),
            },
        }
    }
}

/// Reads records from `input`, handing each to `emit`; stops early when `emit` returns `false`. Returns an
/// error only when the input cannot be read any further.
pub fn read_records(
    input: impl Read,
    format: InputFormat,
    ids: &IdSource,
    mut emit: impl FnMut(InputRecord) -> bool,
) -> std::io::Result<()> {
    match format {
        InputFormat::Jsonl => read_jsonl(input, ids, &mut emit),
        InputFormat::Csv => read_csv(input, ids, &mut emit),
    }
}

fn read_jsonl(
    input: impl Read,
    ids: &IdSource,
    emit: &mut impl FnMut(InputRecord) -> bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(input);
    let mut bytes = Vec::new();
    let mut line = 0u64;
    loop {
        bytes.clear();
        if reader.read_until(b'\n', &mut bytes)? == 0 {
            return Ok(());
        }
        line += 1;
        let text = bytes.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let read = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(fields)) => ids.id(line, &fields).map(|id| Readable {
                id,
                json: text.to_vec(),
            }),
            Ok(_) => Err(format!("line {line}: not a json object")),
            Err(error) => Err(format!("line {line}: not valid json: {error}")),
        };
        if !emit(InputRecord { line, read }) {
            return Ok(());
        }
    }
}

fn read_csv(
    input: impl Read,
    ids: &IdSource,
    emit: &mut impl FnMut(InputRecord) -> bool,
) -> std::io::Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => return Err(csv_io_error(error)),
    };
    let mut row = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut row) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = row.position().map_or(line, csv::Position::line);
                let fields: Map<String, Value> = headers
                    .iter()
                    .zip(row.iter())
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, value)| (name.to_string(), Value::String(value.to_string())))
                    .collect();
                let read = ids.id(line, &fields).and_then(|id| {
                    serde_json::to_vec(&fields)
                        .map(|json| Readable { id, json })
                        .map_err(|error| format!("line {line}: {error}"))
                });
                if !emit(InputRecord { line, read }) {
                    return Ok(());
                }
            }
            Err(error) if error.is_io_error() => return Err(csv_io_error(error)),
            Err(error) => {
                let line = error.position().map_or(line, csv::Position::line);
                let read = Err(format!("line {line}: {}", csv_problem(&error)));
                if !emit(InputRecord { line, read }) {
                    return Ok(());
                }
            }
        }
    }
}

/// What is wrong with a row, without the position the csv crate puts in its messages (the line is named
/// already).
fn csv_problem(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} columns where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid utf-8".to_string(),
        _ => error.to_string(),
    }
}

fn csv_io_error(error: csv::Error) -> std::io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(error) => error,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, format: InputFormat, ids: &IdSource) -> Vec<(u64, Result<String, String>)> {
        let mut found = Vec::new();
        read_records(text.as_bytes(), format, ids, |record| {
            found.push((
                record.line,
                record.read.map(|readable| {
                    format!(
                        "{} {}",
                        readable.id,
                        String::from_utf8_lossy(&readable.json)
                    )
                }),
            ));
            true
        })
        .unwrap();
        found
    }

    #[test]
    fn json_lines_keep_their_text_and_name_their_line_when_bad() {
        let ids = IdSource::Field("event".into());
        let found = read(
            "{\"event\":\"a\", \"body\":1}\n\n[1]\n{\"event\":7}\n{bad\n{\"body\":2}\n{\"event\":true}\n",
            InputFormat::Jsonl,
            &ids,
        );
        assert_eq!(found[0], (1, Ok("a {\"event\":\"a\", \"body\":1}".into())));
        assert_eq!(found[1], (3, Err("line 3: not a json object".into())));
        assert_eq!(found[2], (4, Ok("7 {\"event\":7}".into())));
        assert!(matches!(&found[3], (5, Err(why)) if why.starts_with("line 5: not valid json")));
        assert_eq!(
            found[4],
            (
                6,
                Err("line 6: id field \"event\" is missing or empty".into())
            )
        );
        assert_eq!(
            found[5],
            (
                7,
                Err("line 7: id field \"event\" must be a string or a number".into())
            )
        );
        assert_eq!(found.len(), 6);
    }

    #[test]
    fn csv_rows_become_objects_of_their_non_empty_cells() {
        let ids = IdSource::LineNumber {
            prefix: "export:".into(),
        };
        let found = read(
            "email,body,tag\nann@example.com,\"hello, world\",\nbob@example.com,hi\n\"multi\nline\",x,y\n",
            InputFormat::Csv,
            &ids,
        );
        assert_eq!(
            found[0],
            (
                2,
                Ok("export:2 {\"body\":\"hello, world\",\"email\":\"ann@example.com\"}".into())
            )
        );
        assert_eq!(
            found[1],
            (3, Err("line 3: 2 columns where the header has 3".into()))
        );
        assert_eq!(
            found[2],
            (
                4,
                Ok("export:4 {\"body\":\"x\",\"email\":\"multi\\nline\",\"tag\":\"y\"}".into())
            )
        );
    }

    #[test]
    fn reading_stops_when_told() {
        let ids = IdSource::LineNumber {
            prefix: String::new(),
        };
        let mut seen = 0;
        read_records("{}\n{}\n{}\n".as_bytes(), InputFormat::Jsonl, &ids, |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!(seen, 2);
    }
}
