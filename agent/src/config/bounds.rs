//! Limits a document must keep before it is deserialised: its size, its nesting, and what its
//! anchors and aliases expand to. They are checked on a stream of parser events, which costs
//! time in proportion to the text and memory in proportion to its anchors, so no input can
//! make the parse itself grow without bound (a few hundred bytes of aliases can expand to
//! gigabytes; deep nesting makes serde_yaml's parse quadratic).

use std::{
    collections::HashMap, fs::File, io::Read as _, os::unix::fs::OpenOptionsExt as _, path::Path,
};

use yaml_rust2::parser::{Event, Parser};

use super::ConfigError;

/// Largest configuration file: 16 384 services of a few backends each fit in well under this.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Deepest nesting of mappings and sequences (the configuration itself needs 6).
const MAX_DEPTH: usize = 32;
/// Most nodes a document may expand to, aliases counted as what they stand for.
const MAX_NODES: u64 = 1_000_000;

/// Reads a file of at most `max` bytes that must be a regular file. It is opened without
/// blocking, so a FIFO or a device in its place is refused rather than waited on or read
/// forever.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(too_big(meta.len(), max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64, max));
    }
    Ok(bytes)
}

fn too_big(len: u64, max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{len} bytes or more, at most {max} are read"),
    )
}

/// Checks the document's nesting and expanded size on the parser's events, stopping at the
/// first event past a limit.
pub fn check_document(text: &str) -> Result<(), ConfigError> {
    let mut parser = Parser::new_from_str(text);
    let mut nodes: u64 = 0;
    // Expanded size of every anchored node seen so far, by anchor id.
    let mut anchored: HashMap<usize, u64> = HashMap::new();
    // Open collections: their anchor id and the node count when they began.
    let mut open: Vec<(usize, u64)> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            // The scanner has a depth limit of its own, above ours, for flow collections it
            // has not handed on as events yet.
            if e.info().contains("recursion limit") {
                ConfigError::Syntax(format!(
                    "nested more than {MAX_DEPTH} levels deep at line {}, column {}",
                    e.marker().line(),
                    e.marker().col() + 1
                ))
            } else {
                ConfigError::Syntax(e.to_string())
            }
        })?;
        let at = || format!("line {}, column {}", mark.line(), mark.col() + 1);
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(_, _, anchor, _) => {
                nodes += 1;
                if anchor > 0 {
                    anchored.insert(anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                open.push((anchor, nodes));
                if open.len() > MAX_DEPTH {
                    return Err(ConfigError::Syntax(format!(
                        "nested more than {MAX_DEPTH} levels deep at {}",
                        at()
                    )));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop()
                    && anchor > 0
                {
                    anchored.insert(anchor, nodes - start + 1);
                }
            }
            Event::Alias(anchor) => {
                nodes = nodes.saturating_add(anchored.get(&anchor).copied().unwrap_or(1));
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
        }
        if nodes > MAX_NODES {
            return Err(ConfigError::Syntax(format!(
                "the document expands to more than {MAX_NODES} values by {} (aliases count as \
                 what they stand for)",
                at()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_without_expanding_it() {
        // Nine levels of ten aliases each: 10^9 values if expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let err = check_document(&text).expect_err("refused").to_string();
        assert!(err.contains("expands to more than"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        check_document(&nested(32)).expect("32 levels pass");
        let err = check_document(&nested(33))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("nested more than 32 levels"), "{err}");
        // Far deeper: refused as fast, with the same words (the scanner stops first).
        let started = std::time::Instant::now();
        let err = check_document(&nested(100_000))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("nested more than 32 levels"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn ordinary_anchors_and_documents_pass() {
        check_document("base: &b {address: 10.0.0.1:80}\nother: *b\nlist: [1, 2, 3]\n")
            .expect("fine");
        check_document("").expect("an empty text has no document to bound");
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        assert!(read_regular_file(Path::new("/dev/zero"), MAX_CONFIG_BYTES).is_err());
        let dir = std::env::temp_dir().join(format!("sluice-bounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let started = std::time::Instant::now();
        assert!(
            read_regular_file(&fifo, MAX_CONFIG_BYTES).is_err(),
            "a FIFO is refused"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "and not waited on"
        );
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; 1025]).expect("write");
        assert!(read_regular_file(&big, 1024).is_err());
        assert_eq!(read_regular_file(&big, 2048).expect("read").len(), 1025);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
