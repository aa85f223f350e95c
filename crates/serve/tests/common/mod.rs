//! Shared by the serve tests: the OpenAI-compatible router on an ephemeral local port.

use serve::openai::OpenAiState;
use serve::Server;
use std::sync::Arc;

/// Serves `state` as `activepref serve --openai` does (a [`Server`] with the default limits) on 127.0.0.1 from a
/// background thread for the rest of the test process; returns the base URL (`http://127.0.0.1:PORT`, without
/// `/v1`).
pub fn serve(state: OpenAiState) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Server::new().with_openai(Arc::new(state));
    std::thread::spawn(move || app.serve_blocking(listener, false).unwrap());
    format!("http://{addr}")
}
