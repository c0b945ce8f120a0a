#![no_main]
//! Fuzz target `json_answer`: the check is `tollgate::fuzzing::json_answer` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::json_answer(data));
