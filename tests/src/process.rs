//! The real `hookline` binary as an OS process: start it with an environment, kill it with
//! SIGKILL (what production loses: no graceful shutdown, claims left behind), start it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;

use crate::TestEnv;

/// A `hookline` process, killed with SIGKILL when dropped.
pub struct HooklineProcess {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_dir: PathBuf,
    name: String,
    child: Option<Child>,
    /// How many times it was started.
    starts: usize,
}

impl HooklineProcess {
    /// Starts `hookline <args>` with `envs` on top of a clean environment (the test process'
    /// `DATABASE_URL`, `REDIS_URL` and `HOOKLINE_*` variables are not inherited). Its output goes
    /// to `<log_dir>/<name>-<n>.log`, one file per start.
    pub fn spawn(name: &str, args: &[&str], envs: Vec<(String, String)>, log_dir: &Path) -> Self {
        let mut process = Self {
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            envs,
            log_dir: log_dir.to_owned(),
            name: name.to_owned(),
            child: None,
            starts: 0,
        };
        process.start();
        process
    }

    fn start(&mut self) {
        self.starts += 1;
        let log_path = self
            .log_dir
            .join(format!("{}-{}.log", self.name, self.starts));
        let log = std::fs::File::create(&log_path).expect("create the process log");
        let mut command = Command::new(crate::hookline_binary());
        command.args(&self.args);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("HOOKLINE_")
                || matches!(name.as_str(), "DATABASE_URL" | "REDIS_URL" | "RUST_LOG")
            {
                command.env_remove(name);
            }
        }
        command
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log));
        self.child = Some(command.spawn().expect("start hookline"));
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again (same arguments and environment) after a [`kill`](Self::kill).
    pub fn respawn(&mut self) {
        self.kill();
        self.start();
    }

    /// Whether it is running (it did not exit by itself).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How many times it was started.
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// Everything it logged, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|start| {
                let path = self.log_dir.join(format!("{}-{start}.log", self.name));
                std::fs::read_to_string(path).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for HooklineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The environment of a `hookline worker` (or `serve`, `all`) in a test's environment, with
/// the same fast settings as [`TestEnv::settings`]: database and queue of the test, the test
/// encryption key, private targets allowed, short sweeps, leases, retries and timeouts.
pub fn hookline_env(env: &TestEnv) -> Vec<(String, String)> {
    let settings = env.settings();
    let schedule = settings
        .retry_schedule
        .0
        .iter()
        .map(|delay| format!("{}ms", delay.as_millis()))
        .collect::<Vec<_>>()
        .join(",");
    let mut vars = vec![
        ("DATABASE_URL", settings.database_url.clone()),
        (
            "HOOKLINE_ENCRYPTION_KEY",
            base64::engine::general_purpose::STANDARD.encode(crate::TEST_ENCRYPTION_KEY),
        ),
        ("HOOKLINE_ADMIN_TOKEN", crate::TEST_ADMIN_TOKEN.to_owned()),
        ("HOOKLINE_QUEUE_PREFIX", settings.queue_prefix.clone()),
        (
            "HOOKLINE_SWEEP_INTERVAL",
            format!("{}ms", settings.sweep_interval.as_millis()),
        ),
        (
            "HOOKLINE_LEASE",
            format!("{}ms", settings.lease.as_millis()),
        ),
        (
            "HOOKLINE_WORKER_CONCURRENCY",
            settings.worker_concurrency.to_string(),
        ),
        ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true".to_owned()),
        ("HOOKLINE_RETRY_SCHEDULE", schedule),
        (
            "HOOKLINE_DELIVERY_CONNECT_TIMEOUT",
            format!("{}ms", settings.delivery_connect_timeout.as_millis()),
        ),
        (
            "HOOKLINE_DELIVERY_TIMEOUT",
            format!("{}ms", settings.delivery_timeout.as_millis()),
        ),
        (
            "HOOKLINE_DATA_DIR",
            env.dir.path().join("data").display().to_string(),
        ),
        (
            "RUST_LOG",
            "info,sqlx=warn,sea_orm=warn,apalis=warn".to_owned(),
        ),
        ("NO_COLOR", "1".to_owned()),
    ];
    if let Some(redis_url) = &settings.redis_url {
        vars.push(("REDIS_URL", redis_url.clone()));
    }
    vars.into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}
