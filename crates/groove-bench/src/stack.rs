//! A sandbox and a service started together for one scenario, in a scratch dir, with the bench credential
//! stored. Each scenario gets a fresh stack so that one scenario's ledger, connections or memory peak do not
//! leak into the next one's figures.

use crate::children::{Binaries, ScratchDir};
use crate::cpu::{CpuMark, Pids};
use crate::database::ScratchDatabase;
use crate::fail::BenchResult;
use crate::records::Tickets;
use crate::sandbox::{self, SandboxChild, SandboxFlags};
use crate::service::ServiceChild;

pub struct Stack {
    // Field order is drop order: the service goes first (it calls the sandbox), the scratch dir last.
    pub service: ServiceChild,
    pub sandbox: SandboxChild,
    pub tickets: Tickets,
    /// For the sandbox's control endpoints.
    pub control: reqwest::Client,
    _database: Option<ScratchDatabase>,
    _scratch: ScratchDir,
}

impl Stack {
    pub async fn start(
        binaries: &Binaries,
        label: &str,
        flags: &SandboxFlags,
    ) -> BenchResult<Stack> {
        let scratch = ScratchDir::create(label)?;
        let sandbox = SandboxChild::start(&binaries.sandbox, flags, &scratch)?;
        let database = match &binaries.database_url {
            Some(admin_url) => Some(ScratchDatabase::create(admin_url, label).await?),
            None => None,
        };
        let mut service_args = binaries.service_args.clone();
        if let Some(database) = &database {
            service_args.extend(["--database-url".to_string(), database.url().to_string()]);
        }
        let service = ServiceChild::start(
            &binaries.service,
            &service_args,
            &sandbox.base_url,
            &scratch,
        )
        .await?;
        service.create_credential(sandbox::API_KEY).await?;
        eprintln!(
            "[{label}] sandbox pid {} at {} {flags:?}; service pid {}",
            sandbox.pid(),
            sandbox.base_url,
            service.pid()
        );
        let tickets = Tickets::new(&sandbox.mailbox_email);
        Ok(Stack {
            service,
            sandbox,
            tickets,
            control: reqwest::Client::new(),
            _database: database,
            _scratch: scratch,
        })
    }

    pub fn pids(&self) -> Pids {
        Pids {
            sandbox: self.sandbox.pid(),
            service: self.service.pid(),
        }
    }

    pub fn cpu_mark(&self) -> CpuMark {
        CpuMark::now(self.pids())
    }

    /// Fails (with the service's log) if either child died during a run.
    pub fn ensure_running(&mut self) -> BenchResult<()> {
        self.sandbox.guard.ensure_running()?;
        self.service.guard.ensure_running().map_err(|error| {
            crate::fail::BenchError::new(format!("{error}\n{}", self.service.log_tail()))
        })
    }
}
