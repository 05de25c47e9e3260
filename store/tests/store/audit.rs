//! The SSH audit trail: sessions and their channels.

use super::*;

pub(crate) async fn ssh_session_audit(db: &TestDb) {
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-one"))
        .await
        .unwrap();
    let v4: SocketAddr = "203.0.113.7:52144".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:40022".parse().unwrap();
    let shell = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: v4,
        })
        .await
        .unwrap();
    let by_token = store
        .open_ssh_session(&NewSshSession {
            user_id: None,
            sandbox_id: sandbox.id.clone(),
            source_addr: v6,
        })
        .await
        .unwrap();
    let forward = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: v4,
        })
        .await
        .unwrap();
    assert_eq!(shell.ended_at, None);

    let big = u64::from(u32::MAX) * 10;
    store
        .close_ssh_session(
            &shell.id,
            &SessionEnd {
                bytes_in: 1234,
                bytes_out: big,
                exit: Some(SessionExit::Status(3)),
            },
        )
        .await
        .unwrap();
    store
        .close_ssh_session(
            &by_token.id,
            &SessionEnd {
                bytes_in: 1,
                bytes_out: 2,
                exit: Some(SessionExit::Signal("KILL".into())),
            },
        )
        .await
        .unwrap();
    assert_conflict(
        store
            .close_ssh_session(&shell.id, &SessionEnd::default())
            .await,
    );
    assert_not_found(
        store
            .close_ssh_session(
                &warren_store::SshSessionId::generate(),
                &SessionEnd::default(),
            )
            .await,
    );

    let sessions = store.list_ssh_sessions(&sandbox.id).await.unwrap();
    assert_eq!(sessions.len(), 3);
    let get = |id| sessions.iter().find(|s| &s.id == id).unwrap();
    let s = get(&shell.id);
    assert_eq!(s.user_id.as_ref(), Some(&alice.id));
    assert_eq!(s.source_addr, v4);
    assert!(s.ended_at.is_some());
    assert_eq!((s.bytes_in, s.bytes_out), (1234, big));
    assert_eq!(s.exit, Some(SessionExit::Status(3)));
    let s = get(&by_token.id);
    assert_eq!(s.user_id, None);
    assert_eq!(s.source_addr, v6);
    assert_eq!(s.exit, Some(SessionExit::Signal("KILL".into())));
    let s = get(&forward.id);
    assert_eq!(s, &forward);

    assert_not_found(
        store
            .open_ssh_session(&NewSshSession {
                user_id: None,
                sandbox_id: SandboxId::parse("sbx-none").unwrap(),
                source_addr: v4,
            })
            .await,
    );
}

pub(crate) async fn ssh_channel_audit(db: &TestDb) {
    use warren_store::{ChannelKind, NewSshChannel};
    let store = db.open().await;
    let alice = store.create_user("alice", false).await.unwrap();
    let sandbox = store
        .create_sandbox(&new_sandbox(&alice.id, "sbx-chan"))
        .await
        .unwrap();
    let session = store
        .open_ssh_session(&NewSshSession {
            user_id: Some(alice.id.clone()),
            sandbox_id: sandbox.id.clone(),
            source_addr: "203.0.113.7:52144".parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(store.get_ssh_session(&session.id).await.unwrap(), session);
    let channel = |seq, kind, command: Option<&str>, terminal| NewSshChannel {
        session_id: session.id.clone(),
        seq,
        kind,
        command: command.map(str::to_owned),
        terminal,
    };
    // A command line is kept as given, quotes and all.
    let exec = channel(1, ChannelKind::Exec, Some("make test 'a b' ☃"), false);
    store.open_ssh_channel(&exec).await.unwrap();
    store
        .open_ssh_channel(&channel(2, ChannelKind::Shell, None, true))
        .await
        .unwrap();
    store
        .open_ssh_channel(&channel(3, ChannelKind::Subsystem, Some("sftp"), false))
        .await
        .unwrap();
    assert_conflict(store.open_ssh_channel(&exec).await);
    let unknown = NewSshChannel {
        session_id: warren_store::SshSessionId::generate(),
        ..exec.clone()
    };
    assert_not_found(store.open_ssh_channel(&unknown).await);

    let end = SessionEnd {
        bytes_in: 5,
        bytes_out: u64::from(u32::MAX) * 3,
        exit: Some(SessionExit::Status(2)),
    };
    store.close_ssh_channel(&session.id, 1, &end).await.unwrap();
    // The first record stands; an unknown channel is not found.
    assert_not_found(
        store
            .close_ssh_channel(&session.id, 1, &SessionEnd::default())
            .await,
    );
    assert_not_found(
        store
            .close_ssh_channel(&session.id, 9, &SessionEnd::default())
            .await,
    );

    let channels = store.list_ssh_channels(&session.id).await.unwrap();
    let seqs: Vec<u32> = channels.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let first = &channels[0];
    assert_eq!(first.kind, ChannelKind::Exec);
    assert_eq!(first.command.as_deref(), Some("make test 'a b' ☃"));
    assert!(!first.terminal && first.ended_at.is_some());
    assert_eq!(
        (first.bytes_in, first.bytes_out),
        (end.bytes_in, end.bytes_out)
    );
    assert_eq!(first.exit, Some(SessionExit::Status(2)));
    assert!(channels[1].terminal && channels[1].ended_at.is_none());
    assert_eq!(channels[2].command.as_deref(), Some("sftp"));
}
