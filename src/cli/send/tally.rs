//! Counts per outcome, shown while sending and as the closing table.

use std::fmt;

use super::report::Ending;

/// How many records of the input ended how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub invalid: u64,
    pub failed: u64,
    /// Sent, with no result before the stream ended.
    pub unanswered: u64,
    /// Read but not sent: the stream ended first.
    pub not_sent: u64,
    /// Delivered according to the report given to `--resume`, so not sent again.
    pub resumed: u64,
}

impl Tally {
    pub fn count(&mut self, ending: Ending) {
        match ending {
            Ending::Delivered => self.delivered += 1,
            Ending::Duplicate => self.duplicate += 1,
            Ending::Rejected => self.rejected += 1,
            Ending::Invalid => self.invalid += 1,
            Ending::Failed => self.failed += 1,
            Ending::Unanswered => self.unanswered += 1,
        }
    }

    /// Records that got an outcome from the server or were refused here.
    pub fn answered(&self) -> u64 {
        self.delivered + self.duplicate + self.rejected + self.invalid + self.failed
    }

    /// Every record of the input that was read.
    pub fn total(&self) -> u64 {
        self.answered() + self.unanswered + self.not_sent + self.resumed
    }

    /// Whether every record read is in Groove.
    pub fn all_delivered(&self) -> bool {
        self.total() == self.delivered + self.duplicate + self.resumed
    }

    /// One line for the progress bar.
    pub fn progress_line(&self) -> String {
        format!(
            "delivered {} · duplicate {} · rejected {} · invalid {} · failed {}",
            self.delivered, self.duplicate, self.rejected, self.invalid, self.failed
        )
    }
}

/// The closing table.
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("delivered", self.delivered),
            ("duplicate", self.duplicate),
            ("rejected", self.rejected),
            ("invalid", self.invalid),
            ("failed", self.failed),
            ("unanswered", self.unanswered),
            ("not sent", self.not_sent),
            ("resumed", self.resumed),
        ];
        writeln!(f, "{:<12}{:>12}", "outcome", "records")?;
        for (name, count) in rows.into_iter().filter(|(_, count)| *count > 0) {
            writeln!(f, "{name:<12}{count:>12}")?;
        }
        write!(f, "{:<12}{:>12}", "total", self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_what_happened_and_the_total() {
        let mut tally = Tally::default();
        for ending in [Ending::Delivered, Ending::Delivered, Ending::Invalid] {
            tally.count(ending);
        }
        tally.resumed = 3;
        assert_eq!(
            tally.to_string(),
            "outcome          records\ndelivered              2\ninvalid                1\n\
             resumed                3\ntotal                  6"
        );
        assert!(!tally.all_delivered());
        tally.invalid = 0;
        assert!(tally.all_delivered());
    }
}
