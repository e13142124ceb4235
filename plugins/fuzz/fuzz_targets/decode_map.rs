//! Any bytes a plugin hands to `proxy_set_header_map_pairs` or
//! `proxy_send_local_response`: decoding must never panic, and what decodes must
//! survive a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gantry_plugins::abi::check_map_round_trip(data);
});
