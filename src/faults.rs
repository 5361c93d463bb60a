//! Named fault points (fail-parallel), one registry per engine so tests run in parallel.
//!
//! A fault point is written `failpoint!(faults, "area::step")` at a protocol step. Without the
//! `failpoints` feature it compiles to nothing. With it, a test configures the registry it injected
//! (`return` → the step fails with an injected `Unavailable` error; `pause`, `sleep(ms)` → the step
//! waits, to script races; `panic` → the task dies mid-protocol).

use std::sync::Arc;

pub use fail_parallel::FailPointRegistry;

/// The fault points an engine consults: none by default.
#[derive(Clone, Default)]
pub struct FaultRegistry(pub(crate) Option<Arc<FailPointRegistry>>);

impl FaultRegistry {
    /// Consult `registry` (effective only with the `failpoints` feature).
    pub fn new(registry: Arc<FailPointRegistry>) -> Self {
        FaultRegistry(Some(registry))
    }
}

impl std::fmt::Debug for FaultRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "FaultRegistry(active)"
        } else {
            "FaultRegistry(none)"
        })
    }
}

/// Evaluates a fault point inside an `async` function returning `Result`.
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint {
    ($faults:expr, $name:literal) => {
        #[cfg(feature = "failpoints")]
        if let Some(registry) = $faults.0.as_ref() {
            if let Some(arg) = ::fail_parallel::eval_async(registry.clone(), $name, |arg| arg).await
            {
                return Err($crate::error::Error::injected($name, arg));
            }
        }
    };
}

/// Evaluates a fault point inside a blocking (non-async) function returning `Result`.
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint_sync {
    ($faults:expr, $name:literal) => {
        #[cfg(feature = "failpoints")]
        if let Some(registry) = $faults.0.as_ref() {
            if let Some(arg) = ::fail_parallel::eval(registry.clone(), $name, |arg| arg) {
                return Err($crate::error::Error::injected($name, arg));
            }
        }
    };
}
