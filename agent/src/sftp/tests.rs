//! [`serve`](super::serve) over an in-memory stream: the session starts, answers in
//! order, and ends cleanly when the client goes away. The behaviour of each request is
//! tested with the real OpenSSH client in `tests/sftp_direct.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

async fn send(client: &mut DuplexStream, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap();
    client.write_all(&len.to_be_bytes()).await.unwrap();
    client.write_all(body).await.unwrap();
}

async fn recv(client: &mut DuplexStream) -> Vec<u8> {
    let len = client.read_u32().await.unwrap();
    let mut packet = vec![0; len as usize];
    client.read_exact(&mut packet).await.unwrap();
    packet
}

#[tokio::test]
async fn serves_a_stream_until_the_client_leaves() {
    let home = tempfile::TempDir::new().unwrap();
    let home_path = home.path().canonicalize().unwrap();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn(super::serve(server, home_path.clone()));

    send(&mut client, &[1, 0, 0, 0, 3]).await; // INIT, version 3
    let version = recv(&mut client).await;
    assert_eq!(version[..5], [2, 0, 0, 0, 3]);

    // Two requests sent back to back come back in order, each with its id.
    let realpath = |id: u8| [16, 0, 0, 0, id, 0, 0, 0, 1, b'.'];
    send(&mut client, &realpath(7)).await;
    send(&mut client, &realpath(8)).await;
    for id in [7, 8] {
        let name = recv(&mut client).await;
        assert_eq!(name[..9], [104, 0, 0, 0, id, 0, 0, 0, 1]); // NAME, id, one entry
        let path = home_path.to_str().unwrap().as_bytes();
        assert_eq!(&name[13..13 + path.len()], path);
    }

    drop(client);
    session.await.unwrap().unwrap();
}
