//! The GGUF chat template, rendered by minijinja, against Python Jinja2's
//! rendering (tests/fixtures/make_chat_fixture.py).

use crate::common::*;
use gantry_inference::chat::Message;

#[test]
fn chat_template_renders_as_the_reference_does() {
    let loaded = model();
    if !real_model() {
        return;
    }
    let template = loaded
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    for case in fixture("chat_template.json")["cases"].as_array().unwrap() {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        assert_eq!(
            template.render(&messages).unwrap(),
            case["rendered"].as_str().unwrap()
        );
    }
}
