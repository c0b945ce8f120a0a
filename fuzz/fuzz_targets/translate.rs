#![no_main]
//! Fuzz target `translate`: the check is `tollgate::fuzzing::translate` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::translate(data));
