//! Where in the definition's text a field or table is, for errors that point at a line.

/// 1-based line and column of byte offset `pos` in `text`.
pub(super) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Best-effort position of a dotted field (`builder.kind`, `installer`) in the TOML text.
pub(super) fn locate_field(text: &str, field: &str) -> (usize, usize) {
    // `system.repositories[1].signed_by`: table `system.repositories` (its second), key
    // `signed_by`; `provisioners[2]`: the third `[[provisioners]]` itself.
    let (table, key) = match field.rsplit_once('.') {
        Some((table, key)) if !key.contains('[') => (table, Some(key)),
        _ => (field, None),
    };
    let found = locate_in_table(text, table, key);
    match (found, table.rsplit_once('.')) {
        // A key of an inline table (`data.tarball.path`): the line of that table's key.
        (None, Some((parent, inline))) if !inline.contains('[') => {
            locate_in_table(text, parent, Some(inline))
        }
        _ => found,
    }
    .unwrap_or((1, 1))
}

/// The line and column of `key` in the table `table` (`name` or `name[n]` for the n-th of an
/// array of tables), or of the table's header without a key.
fn locate_in_table(text: &str, table: &str, key: Option<&str>) -> Option<(usize, usize)> {
    let (table, nth) = match table.split_once('[') {
        Some((name, n)) => (name, n.trim_end_matches(']').parse().unwrap_or(0)),
        None => (table, 0),
    };
    let mut seen = 0;
    let mut in_table = false;
    for (idx, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table && seen == nth;
            if name == table {
                seen += 1;
            }
            if in_table && key.is_none() {
                return Some((idx + 1, line.find('[').unwrap_or(0) + 1));
            }
            continue;
        }
        if let Some(key) = key {
            if in_table && t.split('=').next().map(str::trim) == Some(key) {
                return Some((idx + 1, line.find(key).unwrap_or(0) + 1));
            }
        }
    }
    None
}
