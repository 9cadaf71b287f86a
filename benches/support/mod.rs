//! What the bench programs share: the broker address, the process's CPU time, medians.
#![allow(dead_code)]

/// `TCHU_BROKER_URL`, else the local broker.
pub fn url() -> String {
    std::env::var(tchu::BROKER_URL_ENV).unwrap_or_else(|_| tchu::DEFAULT_BROKER_URL.into())
}

/// The median of a run's figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The process's CPU time so far (user + system), in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: utime
    // and stime are the 14th and 15th of the line, the 12th and 13th after the name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // USER_HZ: 100 on every Linux this runs on (the kernel's ABI, not the tick rate).
    ticks / 100.0
}
