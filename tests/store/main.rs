//! The storage seam: the store contract of both implementations, poisoning on a failed fsync, and
//! the hooked test wrapper (`common::hooked`) forwarding every method. One test binary for the area.

#[path = "../common/mod.rs"]
mod common;

mod contract;
mod hooked;
mod poison;
mod s3_attack;
