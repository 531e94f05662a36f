//! CPU used by each process during a run, in cores (CPU seconds per wall second), so a table row shows who
//! was busy: the bench itself (client side), the sandbox (the "Groove" side) or the service.

use std::time::Instant;

use crate::procfs;

/// The three processes of a run.
#[derive(Clone, Copy, Debug)]
pub struct Pids {
    pub sandbox: u32,
    pub service: u32,
}

/// CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    at: Instant,
    bench: f64,
    sandbox: f64,
    service: f64,
    machine: f64,
}

/// CPU used between two marks, in cores.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub bench: f64,
    pub sandbox: f64,
    pub service: f64,
    /// Everything else the machine did: other processes, and interrupt work not charged to a process.
    pub other: f64,
}

impl CpuMark {
    pub fn now(pids: Pids) -> Self {
        CpuMark {
            at: Instant::now(),
            bench: procfs::cpu_seconds(std::process::id()).unwrap_or(0.0),
            sandbox: procfs::cpu_seconds(pids.sandbox).unwrap_or(0.0),
            service: procfs::cpu_seconds(pids.service).unwrap_or(0.0),
            machine: procfs::machine_busy_seconds().unwrap_or(0.0),
        }
    }

    pub fn until(&self, end: &CpuMark) -> CpuUse {
        let wall = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let bench = (end.bench - self.bench) / wall;
        let sandbox = (end.sandbox - self.sandbox) / wall;
        let service = (end.service - self.service) / wall;
        let machine = (end.machine - self.machine) / wall;
        CpuUse {
            bench,
            sandbox,
            service,
            // Ticks are counted apart, so a small negative remainder is rounding.
            other: (machine - bench - sandbox - service).max(0.0),
        }
    }
}

impl CpuUse {
    /// Sums runs weighted by their wall time (for several alternating rounds of one variant).
    pub fn weighted(parts: &[(CpuUse, f64)]) -> CpuUse {
        let total: f64 = parts.iter().map(|(_, wall)| wall).sum();
        if total <= 0.0 {
            return CpuUse::default();
        }
        let mut sum = CpuUse::default();
        for (usage, wall) in parts {
            sum.bench += usage.bench * wall / total;
            sum.sandbox += usage.sandbox * wall / total;
            sum.service += usage.service * wall / total;
            sum.other += usage.other * wall / total;
        }
        sum
    }
}
