//! Any configuration text: parsing and validation never panic, and every
//! refusal names its problems.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gantry_config::check_parse_property(data);
});
