//! Test support: an [`Access`] over a temporary store, with the audit writer running under a
//! supervisor, and callers as the authorization layer would hand them to a service.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::access::audit::AuditLog;
use crate::access::authz::{Authorizer, Grants};
use crate::access::identity::{Principal, PrincipalSource};
use crate::access::{Access, Caller};
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::store::Store;
use crate::supervisor::{Supervisor, SupervisorBuilder};

pub struct Fixture {
    _dir: tempfile::TempDir,
    _supervisor: Supervisor,
    pub access: Arc<Access>,
    pub tasks: Tasks,
    pub token: CancellationToken,
}

impl Fixture {
    /// The built-in policies; `web.read` is fail-closed; the dev admin holds `*`.
    pub async fn new() -> Fixture {
        let mut config = Config {
            dev_mode: true,
            ..Config::default()
        };
        config.audit.fail_closed_actions = vec!["web.read".to_owned()];
        Fixture::with_config(config).await
    }

    /// An [`Access`] as `config` prepares it, its state in a temporary directory.
    pub async fn with_config(config: Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config.store).unwrap();
        let (tasks, token) = (Tasks::new(), CancellationToken::new());
        let (audit, writer) = AuditLog::open(dir.path(), &config.audit, &tasks).unwrap();
        let mut builder = SupervisorBuilder::new(config.supervisor.clone(), store.clone());
        builder.add_worker(writer);
        let supervisor = builder.start(&tasks, token.clone(), None).await;
        let authorizer = Arc::new(Authorizer::new(Grants::from_config(&config)));
        let access = Arc::new(Access::new(
            authorizer,
            audit,
            Access::prepare(&config).unwrap(),
        ));
        Fixture {
            _dir: dir,
            _supervisor: supervisor,
            access,
            tasks,
            token,
        }
    }

    /// Stops the audit writer: nothing can be written any more.
    pub async fn stop_audit(&self) {
        self.token.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A caller named `name` (a SPIFFE URI from its certificate), holding what the grants give it.
pub fn caller(name: &str) -> Caller {
    Caller {
        principal: Arc::new(Principal {
            name: name.to_owned(),
            source: PrincipalSource::SanUri,
        }),
        token: None,
    }
}
