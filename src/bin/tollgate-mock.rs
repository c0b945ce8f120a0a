//! `tollgate-mock`: the bundled mock upstream (OpenAI, Anthropic, Azure
//! OpenAI, Bedrock, Gemini and Vertex AI wire formats, each with its faults)
//! as a program that
//! builds without the crate's dev-dependencies:
//!
//! ```text
//! cargo run --features mock-server --bin tollgate-mock -- --listen 127.0.0.1:9000
//! cargo install tollgate --features mock-server --bin tollgate-mock
//! ```
//!
//! Its flags, routes and faults: `tollgate-mock --help`, and the guide's
//! mock-upstream chapter. The same server is `examples/mock_upstream.rs`,
//! which the tests embed.

#[path = "../../examples/mock_upstream.rs"]
mod mock_upstream;

fn main() {
    mock_upstream::main();
}
