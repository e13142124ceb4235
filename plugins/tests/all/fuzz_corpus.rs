//! The fuzz targets' seed corpus (plugins/fuzz/corpus), replayed by plain
//! `cargo test` so a crash once found stays fixed.

#[test]
fn the_decode_map_corpus_replays_without_failures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_map");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| gantry_plugins::abi::check_map_round_trip(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the decode_map property",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 10, "the seed corpus is in place ({seen} files)");
}
