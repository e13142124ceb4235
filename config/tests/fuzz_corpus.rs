//! The `config_parse` fuzz target's seed corpus (config/fuzz/corpus), replayed by
//! plain `cargo test` so a crash once found stays fixed.

#[test]
fn the_config_parse_corpus_replays_without_failures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config_parse");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| gantry_config::check_parse_property(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the config_parse property",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 9, "the seed corpus is in place ({seen} files)");
}

#[test]
fn a_certificate_file_that_never_ends_is_refused_not_read_forever() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/config_parse/tls-dev-zero"),
    )
    .unwrap();
    let err = gantry_config::parse(&text, "t", std::path::Path::new(".")).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}
