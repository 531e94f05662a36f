//! `groove-destination send`: streams a JSON Lines or CSV file (or standard input) to a destination over the
//! SendRecords stream, shows progress, writes a report of every record's outcome and can resume from one.
//!
//! Every record read ends in the report: with the server's outcome; as invalid when it cannot be read (its line
//! named); as unanswered when the stream ended after it was sent and before its result. Records read but never
//! sent are counted as not sent. A rerun sends everything again and the server answers what it delivered before
//! as duplicates; `--resume REPORT` does not even send what that report says was delivered.

mod connect;
mod input;
mod report;
mod tally;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::proto::delivery_service_client::DeliveryServiceClient;
use crate::proto::{self, send_records_request, Outcome, ResultDetail};

pub use connect::{bearer, BearerToken};
pub use input::{IdSource, InputFormat};
pub use report::{Ending, Entry};
pub use tally::Tally;

/// Records read ahead of the stream.
const READ_AHEAD: usize = 1024;

/// `groove-destination send` — stream a file of records to a destination.
#[derive(Debug, clap::Parser)]
#[command(
    name = "groove-destination send",
    bin_name = "groove-destination send",
    about = "Stream a JSON Lines or CSV file of records to a destination",
    after_help = "Exit status: 0 when every record is in Groove (delivered, duplicate or resumed), 1 when some \
                  were rejected, invalid or failed, 2 when the stream could not run to its end (records may be \
                  unanswered or not sent; the report says which)."
)]
pub struct SendArgs {
    /// The server: `http://host:port`, or `https://host:port` for TLS.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The destination: its id or `destinations/{id}`. It must be active.
    #[arg(long)]
    pub destination: String,
    /// The field (JSON Lines) or column (CSV) holding each record's id. Without it, ids are the
    /// `--id-prefix` followed by the line number.
    #[arg(long)]
    pub id_field: Option<String>,
    /// The prefix of line-number ids; by default the file's name and a colon (`stdin:` for standard input).
    /// Ids are unique per destination: two files with the same prefix would share ids.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// The input's format; by default CSV for a `.csv` file and JSON Lines otherwise.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Writes every record's outcome here as JSON Lines.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Does not send the records this earlier report says are in Groove (it may be the `--report` file).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Records per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Bearer token of a caller with the `send` scope.
    #[arg(long, env = "GROOVE_DESTINATION_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) the server's certificate is checked against; by default the public roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for a server that asks for one.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The file to send; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
}

/// Why `send` could not run to the end.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Input(String),
    #[error("cannot write the report: {0}")]
    Report(std::io::Error),
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub tally: Tally,
    /// Why the stream ended early, if it did.
    pub stream_error: Option<String>,
    /// The last line of the input read; nothing after it was sent.
    pub last_line_read: u64,
}

impl Finished {
    /// 0: every record is in Groove; 1: some were not accepted; 2: the stream did not run to its end.
    pub fn exit_code(&self) -> u8 {
        if self.stream_error.is_some() || self.tally.unanswered > 0 || self.tally.not_sent > 0 {
            2
        } else if self.tally.all_delivered() {
            0
        } else {
            1
        }
    }
}

/// A record sent and waiting for its result: its line, by id (an id may repeat in a file).
type InFlight = HashMap<String, VecDeque<u64>>;

/// Runs the command; the closing table and errors are the caller's to print.
pub async fn run(args: SendArgs) -> Result<Finished, SendError> {
    let stdin = args
        .file
        .as_ref()
        .is_none_or(|path| path.as_os_str() == "-");
    let format = args.format.unwrap_or_else(|| match &args.file {
        Some(path) if path.extension().is_some_and(|extension| extension == "csv") => {
            InputFormat::Csv
        }
        _ => InputFormat::Jsonl,
    });
    let ids = match (&args.id_field, &args.id_prefix, &args.file) {
        (Some(field), _, _) => IdSource::Field(field.clone()),
        (None, Some(prefix), _) => IdSource::LineNumber {
            prefix: prefix.clone(),
        },
        (None, None, Some(path)) if !stdin => IdSource::LineNumber {
            prefix: format!(
                "{}:",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
        },
        (None, None, _) => IdSource::LineNumber {
            prefix: "stdin:".into(),
        },
    };
    let resumed = match &args.resume {
        Some(path) => report::delivered_in(path).map_err(SendError::Usage)?,
        None => HashMap::new(),
    };
    let reader: Box<dyn std::io::Read + Send> = match &args.file {
        Some(path) if !stdin => Box::new(std::fs::File::open(path).map_err(|error| {
            SendError::Usage(format!("cannot read {}: {error}", path.display()))
        })?),
        _ => Box::new(std::io::stdin()),
    };
    // Opened after the resume report was read: it may be the same file.
    let mut writer =
        report::ReportWriter::create(args.report.as_deref()).map_err(SendError::Report)?;

    let channel = connect::connect(&args).await?;
    let mut client =
        DeliveryServiceClient::with_interceptor(channel, connect::bearer(args.token.as_deref())?);
    let destination = if args.destination.starts_with("destinations/") {
        args.destination.clone()
    } else {
        format!("destinations/{}", args.destination)
    };
    let (outbound, outbound_rx) = mpsc::channel(4);
    let start = proto::SendRecordsRequest {
        message: Some(send_records_request::Message::Start(proto::StreamStart {
            destination,
            result_detail: ResultDetail::OutcomeOnly.into(),
        })),
    };
    // Room for it: the channel is new.
    let _ = outbound.try_send(start);
    let mut responses = match client.send_records(ReceiverStream::new(outbound_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Ok(Finished {
                tally: Tally::default(),
                stream_error: Some(describe(&status)),
                last_line_read: 0,
            })
        }
    };

    let (records_tx, mut records) = mpsc::channel(READ_AHEAD);
    let reading = tokio::task::spawn_blocking(move || {
        input::read_records(reader, format, &ids, |record| {
            records_tx.blocking_send(record).is_ok()
        })
    });

    let progress = progress_bar(args.quiet);
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut in_flight = InFlight::new();
    let mut batch: Vec<(u64, proto::Record)> = Vec::new();
    let mut ready: Option<Vec<(u64, proto::Record)>> = None;
    let mut outbound = Some(outbound);
    let mut input_open = true;
    let mut stream_error = None;
    let batch_size = usize::from(args.batch_size);
    let mut refused = false;
    let mut last_line_read = 0;
    loop {
        if refused {
            outbound = None;
        }
        tokio::select! {
            // Results first: they free room on the server, and end the loop when the stream ends.
            biased;
            message = responses.message() => match message {
                Ok(Some(message)) => {
                    for result in &message.results {
                        for entry in entries_of(result, &mut in_flight) {
                            tally.count(entry.outcome);
                            writer.write(&entry).map_err(SendError::Report)?;
                        }
                    }
                    progress.set_position(tally.answered());
                    let rate = tally.answered() as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    progress.set_message(format!("({rate:.0}/s) {}", tally.progress_line()));
                }
                Ok(None) => break,
                Err(status) => {
                    stream_error = Some(describe(&status));
                    break;
                }
            },
            permit = reserve(&outbound), if ready.is_some() => {
                let Some(permit) = permit else {
                    // The server stopped taking records; its status comes on the response stream.
                    refused = true;
                    continue;
                };
                let records = ready.take().unwrap_or_default();
                let mut message = Vec::with_capacity(records.len());
                for (line, record) in records {
                    in_flight.entry(record.id.clone()).or_default().push_back(line);
                    message.push(record);
                }
                permit.send(proto::SendRecordsRequest {
                    message: Some(send_records_request::Message::Records(proto::RecordBatch {
                        records: message,
                    })),
                });
            },
            record = records.recv(), if input_open && ready.is_none() => match record {
                Some(record) => {
                    last_line_read = record.line;
                    match record.read {
                        Err(why) => {
                            let entry = Entry {
                                field: "record".into(),
                                ..Entry::unsent(record.line, String::new(), Ending::Invalid, why)
                            };
                            tally.count(Ending::Invalid);
                            writer.write(&entry).map_err(SendError::Report)?;
                        }
                        Ok(readable) => match resumed.get(&readable.id) {
                            Some(previous) => {
                                tally.resumed += 1;
                                let entry = Entry { line: record.line, resumed: true, ..previous.clone() };
                                writer.write(&entry).map_err(SendError::Report)?;
                            }
                            None => batch.push((record.line, proto::Record {
                                id: readable.id,
                                data: Some(proto::record::Data::RawJson(readable.json)),
                            })),
                        },
                    }
                    // A partial batch goes as soon as the input has nothing more at hand.
                    if batch.len() >= batch_size || (!batch.is_empty() && records.is_empty()) {
                        ready = Some(std::mem::take(&mut batch));
                    }
                }
                None => {
                    input_open = false;
                    if !batch.is_empty() {
                        ready = Some(std::mem::take(&mut batch));
                    }
                }
            },
        }
        if !input_open && ready.is_none() {
            // Half-close: the server ends the stream once every record sent has its result.
            outbound = None;
        }
    }
    progress.finish_and_clear();
    drop(records);

    tally.not_sent += ready.map_or(0, |records| records.len() as u64) + batch.len() as u64;
    let mut unanswered: Vec<(u64, String)> = in_flight
        .into_iter()
        .flat_map(|(id, lines)| lines.into_iter().map(move |line| (line, id.clone())))
        .collect();
    unanswered.sort_unstable();
    for (line, id) in unanswered {
        tally.count(Ending::Unanswered);
        writer
            .write(&Entry::unsent(
                line,
                id,
                Ending::Unanswered,
                "sent, but the stream ended before its result: it may have been delivered",
            ))
            .map_err(SendError::Report)?;
    }
    writer.finish().map_err(SendError::Report)?;
    match reading.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(SendError::Input(format!("cannot read the input: {error}"))),
        Err(error) => return Err(SendError::Input(format!("input reader failed: {error}"))),
    }
    if stream_error.is_none() && input_open {
        stream_error = Some("the server ended the stream before the input ended".into());
    }
    Ok(Finished {
        tally,
        stream_error,
        last_line_read,
    })
}

/// The report entries of one result: one per record id it names, with the line the id was sent from.
fn entries_of(result: &proto::DeliveryResult, in_flight: &mut InFlight) -> Vec<Entry> {
    let outcome = match result.outcome() {
        Outcome::Delivered => Ending::Delivered,
        Outcome::Duplicate => Ending::Duplicate,
        Outcome::Rejected => Ending::Rejected,
        Outcome::Invalid => Ending::Invalid,
        Outcome::Failed | Outcome::Unspecified => Ending::Failed,
    };
    result
        .record_ids
        .iter()
        .map(|id| {
            let line = match in_flight.get_mut(id) {
                Some(lines) => {
                    let line = lines.pop_front().unwrap_or_default();
                    if lines.is_empty() {
                        in_flight.remove(id);
                    }
                    line
                }
                None => 0,
            };
            Entry {
                line,
                id: id.clone(),
                outcome,
                http_status: result
                    .response
                    .as_ref()
                    .map(|response| response.http_status)
                    .filter(|status| *status != 0),
                attempts: result.attempts,
                error: result.error.clone(),
                field: result.field.clone(),
                resumed: false,
            }
        })
        .collect()
}

async fn reserve<T>(sender: &Option<mpsc::Sender<T>>) -> Option<mpsc::Permit<'_, T>> {
    match sender {
        Some(sender) => sender.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{} (grpc status {:?})", status.message(), status.code())
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // Drawn only on a terminal: a redirected stderr stays clean.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} records {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
