//! Any request body, to any of the API's POST endpoints: parsing and validation
//! never panic, and every refusal is a bounded 4xx naming what is wrong.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gantry::openai::check_body_property(data);
});
