#![no_main]
//! Fuzz target `sse`: the check is `tollgate::fuzzing::sse` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::sse(data));
