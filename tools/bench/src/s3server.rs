//! The S3 test server of the library's tests (SeaweedFS `weed mini` on free loopback ports,
//! `tests/common/s3.rs`), shared with the S3 report: started once per process, stopped (its
//! directory removed) by its watchdog when this process exits.
#![allow(dead_code)]

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

pub fn local_store(dir: &std::path::Path) -> TestResult<std::sync::Arc<dyn rockpoint::Store>> {
    Ok(std::sync::Arc::new(rockpoint::LocalStore::new(dir)?))
}

#[path = "../../../tests/common/s3.rs"]
pub mod s3;
