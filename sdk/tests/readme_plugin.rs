//! The README's "Writing a transport plugin" shows `examples/blob_dir.rs`
//! whole; this keeps the two the same, so the README's plugin is one that
//! compiles (and that the end-to-end suite runs).

#[test]
fn the_readme_shows_the_example_plugin_verbatim() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/blob_dir.rs");
    assert!(
        readme.contains(&format!("```rust\n{example}```")),
        "README.md's plugin example differs from sdk/examples/blob_dir.rs: copy the file into the README"
    );
}
