#![no_main]
//! Fuzz target `config`: the check is `tollgate::fuzzing::config` (see docs/fuzzing.md).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::config(data));
