//! CPU time from /proc, for the benchmarks' CPU-per-operation figures: a cost that a
//! loaded or slower host distorts less than a rate.

/// User plus system CPU seconds so far of process `pid` ("self" for this one); 0 when it
/// cannot be read (the process is gone).
pub fn process_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_seconds(&stat))
        .unwrap_or(0.0)
}

/// CPU seconds so far of every PostgreSQL process on this machine (backends, WAL writer,
/// checkpointer: all of what an operation costs the server).
pub fn postgres_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| stat_seconds(&stat))
        .sum()
}

/// utime + stime of a /proc stat line, in seconds. The fields are counted after the
/// command name, which is in parentheses and may hold spaces; their unit, USER_HZ, is 100
/// per second on Linux.
fn stat_seconds(stat: &str) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_user_plus_system_time() {
        let line = "42 (post gres) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(stat_seconds(line), Some(3.0));
        assert_eq!(stat_seconds("42 (x) S"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1 && process_seconds("self") > 0.0);
    }
}
