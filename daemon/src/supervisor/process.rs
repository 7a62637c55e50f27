//! Facts about this process for detailed health: resident memory and thread count, from
//! `/proc/self/status` (Linux). Missing or unreadable facts are `None`, never an error.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStats {
    pub rss_bytes: Option<u64>,
    pub threads: Option<u64>,
}

pub fn stats() -> ProcessStats {
    std::fs::read_to_string("/proc/self/status")
        .map(|text| parse_status(&text))
        .unwrap_or_default()
}

fn parse_status(text: &str) -> ProcessStats {
    let mut stats = ProcessStats::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            // "VmRSS:     9480 kB"
            stats.rss_bytes = rest
                .split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024);
        } else if let Some(rest) = line.strip_prefix("Threads:") {
            stats.threads = rest.trim().parse().ok();
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tbrainstemd\nVmRSS:\t    9480 kB\nThreads:\t5\n";
        assert_eq!(
            parse_status(text),
            ProcessStats {
                rss_bytes: Some(9480 * 1024),
                threads: Some(5)
            }
        );
        assert_eq!(parse_status("garbage"), ProcessStats::default());
        let live = stats();
        assert!(live.rss_bytes.is_some_and(|b| b > 0));
        assert!(live.threads.is_some_and(|t| t >= 1));
    }
}
