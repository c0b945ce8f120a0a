#![no_main]
//! Fuzz target `request`: the check is `tollgate::fuzzing::request` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::request(data));
