//! hookline's integration tests: one binary, every test on both backends.

mod api;
mod bad_input;
mod batching;
mod check;
mod console;
mod console_browser;
mod delivery;
mod deploy;
mod destinations;
mod dynamic_webhooks;
mod embedded;
mod enrichment;
mod events;
mod faults;
mod fuzz_ingest;
mod grants;
mod helpers;
mod ingest;
mod ingest_guards;
mod metrics;
mod oauth;
mod openapi;
mod processing;
mod rate_limit;
mod retention;
mod scaling;
mod schemathesis;
mod secrets;
mod self_contained;
mod soak;
mod ssrf;
mod subscriptions;
mod tenant_isolation;
mod token_manager;

/// Generates, for each `async fn name(backend: Backend)`, a module `name` with two tests:
/// `embedded` and `postgres_redis`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(tests::Backend::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis() {
                super::$name(tests::Backend::PostgresRedis).await
            }
        }
    )+};
}
