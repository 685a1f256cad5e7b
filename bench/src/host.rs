//! What the machine and this process are doing, printed beside the figures: a figure taken on a
//! busy machine means something else than one taken on an idle one.

use std::path::Path;
use std::time::Duration;

/// CPU time the calling thread has run (Linux `/proc/thread-self/schedstat`, in nanoseconds), for
/// figures that must hold on a machine busy with other work. `None` elsewhere.
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// The 1, 5 and 15 minute load averages (Linux `/proc/loadavg`). `None` elsewhere.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// [`load_average`], or "unknown" where the system does not tell.
pub fn load_average_or_unknown() -> String {
    load_average().unwrap_or_else(|| "unknown".into())
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A size field of this process's `/proc/self/status` in KiB: `"VmRSS:"` (resident memory) or
/// `"VmHWM:"` (its peak). `None` elsewhere.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Bytes a directory tree occupies on disk.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
