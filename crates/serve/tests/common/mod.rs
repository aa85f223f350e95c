//! Shared by the serve tests: the OpenAI-compatible router on an ephemeral local port.

use serve::openai::{router, OpenAiState};
use std::sync::Arc;

/// Serves `state` on 127.0.0.1 from a background thread for the rest of the test process; returns the base URL
/// (`http://127.0.0.1:PORT`, without `/v1`).
pub fn serve(state: OpenAiState) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router(Arc::new(state))).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}
