//! WebSocket through a gateway: the listeners the control plane serves accept upgrades, so a
//! WebSocket client reaches an echo upstream through Envoy.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::fixtures::{CONVERGE, Fleet};

/// A WebSocket server on loopback that echoes every text and binary message.
pub(crate) async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    support::ports::mark_taken(port);
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

/// Upgrades `url` through a proxy (`via` names it), and checks that text and binary messages
/// come back from the echo server unchanged; returns the open socket.
pub(crate) async fn exchange_echoes(
    url: &str,
    via: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("the upgrade goes through {via}: {e}"));
    assert_eq!(response.status(), 101);
    for text in ["hello", &format!("through {via}")] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws
}

#[tokio::test]
async fn websocket_echo_through_envoy() {
    let Some(fleet) = Fleet::start("envoy-websocket", true).await else {
        return;
    };
    fleet.install_base_config().await;
    let (echo_port, echo) = echo_server().await;
    fleet
        .cp
        .put_ok(
            "clusters",
            "echo",
            json!({"endpoints": [{"address": "127.0.0.1", "port": echo_port}]}),
        )
        .await
        .unwrap();
    let revision = fleet
        .cp
        .put_ok(
            "routes",
            "ws",
            json!({"match": {"path_prefix": "/ws"}, "cluster": "echo"}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();

    let mut ws = exchange_echoes(&format!("ws://127.0.0.1:{}/ws", fleet.port), "Envoy").await;
    ws.close(None).await.unwrap();
    echo.abort();
}
