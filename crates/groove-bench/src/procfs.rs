//! What the kernel knows about a process (Linux `/proc`): CPU time used, memory high-water mark, and the
//! machine the bench runs on.

use std::fs;

/// USER_HZ, the unit of `utime`/`stime` in `/proc/PID/stat`. It is 100 on every Linux architecture this runs
/// on; reading it "properly" needs libc's `sysconf`, a new dependency for one constant.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds used so far by all threads of `pid`; `None` once the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (the command) is in parentheses and may hold spaces: count fields after the last ')'.
    let after_command = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    // After ')' the first field is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

/// CPU seconds all CPUs of the machine spent busy so far (first line of `/proc/stat`: everything but idle and
/// iowait). The machine may be shared: busy time beyond the bench's three processes shows interference.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, value)| value)
        .sum();
    Some(busy / CLOCK_TICKS_PER_SECOND)
}

/// Peak resident set size of `pid` so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size of `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    // "VmHWM:\t   12345 kB"
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// "N cores, <CPU model>" from `/proc/cpuinfo`, for telling results of different machines apart.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let processors = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    // The scheduler may allow fewer CPUs than exist (cgroups, taskset): that is what the bench really gets.
    let usable = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(processors);
    if usable == processors || processors == 0 {
        format!("{usable} cores, {model}")
    } else {
        format!("{usable} usable cores of {processors}, {model}")
    }
}
