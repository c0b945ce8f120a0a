#![no_main]
//! Fuzz target `error_body`: the check is `tollgate::fuzzing::error_body` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::error_body(data));
