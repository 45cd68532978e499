//! Orderly shutdown: sockets are told to reconnect elsewhere (1012) and open
//! WatchPresence streams end, so the node stops without waiting out its grace.

mod support;

use support::*;

const T: &str = "acme";

#[tokio::test]
async fn shutdown_tells_sockets_to_reconnect_with_1012() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let reader = tokio::spawn(async move {
        let f = ws.expect_type("reconnect").await;
        assert!(f["after_ms"].is_u64(), "{f}");
        ws.expect_close(1012).await;
    });
    node.shutdown().await;
    within("the socket's reconnect frame", reader)
        .await
        .expect("socket told to reconnect");
}

#[tokio::test]
async fn shutdown_ends_open_watch_presence_streams() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    node.grant(T, "ana", "").await;
    watch.next().await; // the stream is live
    node.shutdown().await;
    // After shutdown returns the stream must be over (end or error), not
    // left open by a server that is still running in the background.
    let end = watch.end().await;
    assert!(
        !matches!(end, Some(Ok(_))),
        "the stream ended, no more events: {end:?}"
    );
}
