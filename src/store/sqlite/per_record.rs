//! What the SQL for per-record tables (the ledger, failed records) shares: lists of record ids bound to
//! `IN (…)`, and rows that must belong to an existing destination.

/// Placeholder counts of the `IN (…)` statements. Lists are padded up to one of these sizes rather than
/// prepared at their own length, so a query has at most three statements to cache instead of one per length.
/// The largest (plus the destination id) stays under 999, the lowest limit on variables a SQLite build may have.
const CHUNK_SIZES: [usize; 3] = [16, 128, 512];

/// Splits `ids` into chunks whose lengths are all in [`CHUNK_SIZES`], padding the last by repeating its last id:
/// an id listed twice in `IN (…)` matches once, so the padding changes no result.
pub(super) fn padded_chunks(ids: &[String]) -> Vec<Vec<&str>> {
    let largest = CHUNK_SIZES[CHUNK_SIZES.len() - 1];
    ids.chunks(largest)
        .map(|chunk| {
            let size = CHUNK_SIZES
                .into_iter()
                .find(|&size| size >= chunk.len())
                .unwrap_or(largest);
            let mut padded: Vec<&str> = chunk.iter().map(String::as_str).collect();
            if let Some(&last) = padded.last() {
                padded.resize(size, last);
            }
            padded
        })
        .collect()
}

/// `?, ?, …`: `count` anonymous placeholders.
pub(super) fn placeholders(count: usize) -> String {
    let mut text = String::with_capacity(count * 3);
    for i in 0..count {
        text.push_str(if i == 0 { "?" } else { ", ?" });
    }
    text
}

/// Whether a write failed because the row's destination does not exist: the only foreign key of the
/// per-record tables. Such a write aborts alone; the transaction around it goes on.
pub(super) fn is_missing_destination(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_padded_to_few_sizes_and_keep_every_id() {
        let ids: Vec<String> = (0..1500).map(|i| format!("r{i}")).collect();
        let chunks = padded_chunks(&ids);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [512, 512, 512]);
        let mut seen: Vec<&str> = chunks.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ids.len());

        let few: Vec<String> = vec!["a".into(), "b".into()];
        let padded = padded_chunks(&few);
        assert_eq!(padded.len(), 1);
        assert_eq!(padded[0].len(), 16);
        assert!(padded[0][1..].iter().all(|&id| id == "b"));
        assert!(padded_chunks(&[]).is_empty());
    }

    #[test]
    fn placeholders_are_comma_separated() {
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(placeholders(0), "");
    }
}
