//! A bounded walk: ListConversations' customer_query and SearchMessages first read at most
//! a fixed number of the owner's rows in page order and test each, and read every match
//! (through an index, then sorted) only when that walk stopped at its bound short of a
//! page. The walk's statement returns its matches and, when it reached its bound, its
//! last row, so the two cases can be told apart.

/// A row of a bounded walk: a match, or the walk's last row.
#[derive(Debug, sqlx::FromRow)]
pub struct Walked<T> {
    #[sqlx(flatten)]
    pub row: T,
    pub matched: bool,
    /// Its place in the walk, from 1.
    pub walked: i64,
}

/// The matches of a walk bounded at `bound` rows, when they answer a page of `limit`:
/// the walk read all of the owner's rows, or found `limit` matches. `None` when it
/// stopped at its bound short of that, and every match must be read instead.
pub fn page<T>(rows: Vec<Walked<T>>, bound: i64, limit: i64) -> Option<Vec<T>> {
    let cut = rows.iter().any(|r| r.walked >= bound);
    let matches: Vec<T> = rows
        .into_iter()
        .filter(|r| r.matched)
        .map(|r| r.row)
        .collect();
    (!cut || i64::try_from(matches.len()).is_ok_and(|n| n >= limit)).then_some(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(walked: i64, matched: bool) -> Walked<i64> {
        Walked {
            row: walked,
            matched,
            walked,
        }
    }

    #[test]
    fn a_walk_that_read_everything_answers_even_a_short_page() {
        let rows = vec![walked(2, true), walked(5, true)];
        assert_eq!(page(rows, 10, 3), Some(vec![2, 5]));
    }

    #[test]
    fn a_walk_cut_at_its_bound_answers_only_a_full_page() {
        let cut = vec![walked(2, true), walked(10, false)];
        assert_eq!(page(cut, 10, 3), None);
        let full = vec![walked(1, true), walked(2, true), walked(10, true)];
        assert_eq!(page(full, 10, 3), Some(vec![1, 2, 10]));
    }
}
