//! What every benchmark prints first: the CPU it ran on (the machine can change
//! from one day to the next, so numbers are only compared within one run).

/// The CPU's name, cores, caches and widest vector extension, for a table's heading.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cache = |index: u32| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{index}/size"))
            .map_or("?".into(), |s| s.trim().to_string())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let avx512 = if info.contains("avx512f") { "with" } else { "no" };
    format!("{name}, {cores} cores, L2 {} per core, L3 {}, {avx512} AVX-512", cache(2), cache(3))
}
