//! The parser against generated input: byte-level mutations of the annotated example, random
//! YAML structures (deep, wide, anchored and aliased), and arbitrary text. Whatever comes in,
//! `parse_str` returns (a config or an error naming what is wrong) without panicking, and in
//! bounded time. Runs a fixed number of cases, so CI time stays bounded.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::parse_str;

const EXAMPLE: &str = include_str!("../../../../config/example.yaml");
/// Far more than any case takes; a parse that grows with its input's nesting or aliases
/// would blow through it.
const BOUND: Duration = Duration::from_secs(2);

fn parses_in_bounded_time(text: &str) {
    let started = Instant::now();
    let result = parse_str(text);
    let took = started.elapsed();
    assert!(took < BOUND, "{took:?} for {} bytes", text.len());
    if let Err(e) = result {
        assert!(!e.to_string().is_empty());
    }
}

/// An edit of the example: replace, insert or delete a few bytes somewhere.
fn mutation() -> impl Strategy<Value = String> {
    let edit = (0..EXAMPLE.len(), 0usize..3, any::<u8>(), 0usize..8);
    proptest::collection::vec(edit, 1..6).prop_map(|edits| {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for (at, kind, byte, len) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes
                    .splice(at..at, std::iter::repeat_n(byte, len))
                    .for_each(drop),
                _ => {
                    let end = (at + len).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A random YAML value in flow style, with anchors and aliases to earlier anchors.
fn structure() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("x".to_owned()),
        Just("10.0.0.1:80".to_owned()),
        Just("*a0".to_owned()),
        Just("*a1".to_owned()),
        "[a-z]{1,6}",
    ];
    leaf.prop_recursive(40, 2_000, 12, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..12)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(("[a-z]{1,4}", inner.clone()), 0..6).prop_map(|v| {
                let pairs: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", pairs.join(", "))
            }),
            (0u8..2, inner).prop_map(|(n, v)| format!("&a{n} {v}")),
        ]
    })
    .prop_map(|v| format!("a0: &a0 [1, 2]\na1: &a1 [*a0, *a0]\nservices: {v}\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_never_panic(text in mutation()) {
        parses_in_bounded_time(&text);
    }

    #[test]
    fn random_structures_never_panic(text in structure()) {
        parses_in_bounded_time(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        parses_in_bounded_time(&text);
    }
}
