use std::sync::Arc;

use policy::ResultLimit;
use tokio::io::DuplexStream;

use super::*;
use crate::proxy::ByteCounters;
use crate::proxy::mysql::codec::{ValueKind, put_lenenc_bytes, types};
use crate::proxy::mysql::stream::{Read, read_message, write_message};

const MORE: u16 = status::MORE_RESULTS_EXISTS;

/// The proxy's two legs and the peers' ends, sequence ids at 2 on both
/// (as after a command and a column count).
fn legs() -> (
    Leg<DuplexStream>,
    Leg<DuplexStream>,
    DuplexStream,
    DuplexStream,
) {
    let (proxy_c, client) = tokio::io::duplex(1 << 20);
    let (proxy_s, server) = tokio::io::duplex(1 << 20);
    let counters = Arc::new(ByteCounters::default());
    let cleg = Leg::new(proxy_c, Side::Client, 2, 1 << 20, counters.clone());
    let sleg = Leg::new(proxy_s, Side::Server, 2, 1 << 20, counters);
    (cleg, sleg, client, server)
}

fn text_row(v: &str) -> Vec<u8> {
    let mut p = Vec::new();
    put_lenenc_bytes(&mut p, v.as_bytes());
    p
}

fn eof(status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

fn ok(affected: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0x00, affected, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

fn column_def(name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "shop", "t", "t", name, name] {
        put_lenenc_bytes(&mut p, s.as_bytes());
    }
    p.push(0x0c);
    p.extend_from_slice(&45u16.to_le_bytes());
    p.extend_from_slice(&255u32.to_le_bytes());
    p.push(types::VAR_STRING);
    p.extend_from_slice(&[0, 0, 0, 0, 0]);
    p
}

/// Writes `packets` from a peer, sequence ids from `seq`.
async fn send(peer: &mut DuplexStream, seq: &mut u8, packets: &[Vec<u8>]) {
    for p in packets {
        write_message(peer, seq, p).await.unwrap();
    }
}

/// Reads `n` messages at a peer.
async fn receive(peer: &mut DuplexStream, seq: &mut u8, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut buf = Vec::new();
        assert_eq!(
            read_message(peer, Side::Client, seq, 1 << 20, &mut buf)
                .await
                .unwrap(),
            Read::Message
        );
        out.push(buf);
    }
    out
}

fn plan(masked: bool) -> ColumnPlan {
    ColumnPlan {
        column_type: types::VAR_STRING,
        kind: ValueKind::Text,
        masked,
        withheld: false,
    }
}

fn no_masks() -> ActiveMasks {
    codec::no_masks()
}

#[tokio::test]
async fn a_limit_stops_the_result_and_keeps_the_connection_in_step() {
    let (mut cleg, mut sleg, mut client, mut server) = legs();
    let mut packets: Vec<Vec<u8>> = (0..100).map(|i| text_row(&format!("row {i}"))).collect();
    packets.push(eof(0x0002));
    let feeder = tokio::spawn(async move {
        let mut seq = 2;
        send(&mut server, &mut seq, &packets).await;
        // The answer to the next command: the drain must stop right
        // before it.
        let mut seq = 0;
        send(&mut server, &mut seq, &[ok(0, 0x0002)]).await;
        server
    });
    let none = no_masks();
    let plans = [plan(false)];
    let r = Relay {
        binary: false,
        deprecate_eof: false,
        masks: None,
        plans: &plans,
        errors: &none,
        withhold: None,
        session: 3,
    };
    let limit = ResultLimit {
        rows: Some(5),
        rows_name: Some("bulk".into()),
        ..ResultLimit::default()
    };
    let mut counter = RowCounter::new(Some(limit));
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let end = rows(&mut cleg, &mut sleg, &mut buf, &mut out, &r, &mut counter)
        .await
        .unwrap();
    cleg.flush().await.unwrap();
    assert_eq!(end.rows, 5);
    assert!(end.limited);
    assert_eq!(end.status, 0x0002, "the server's terminator status");
    let error = end.error.unwrap();
    assert!(
        error.starts_with("ERROR 1104 (42000): interceptor: result exceeds limit \"bulk\""),
        "{error}"
    );

    // The client got five rows, then the ERR in place of the terminator.
    let mut cseq = 2;
    let got = receive(&mut client, &mut cseq, 6).await;
    for (i, row) in got[..5].iter().enumerate() {
        assert_eq!(row, &text_row(&format!("row {i}")));
    }
    let e = codec::parse_err(&got[5]).unwrap();
    assert_eq!((e.code, e.sqlstate.as_deref()), (1104, Some("42000")));
    assert!(e.message.contains("session 3"), "{}", e.message);

    // The server's rows were read up to its terminator, no further.
    let _server = feeder.await.unwrap();
    sleg.seq = 0;
    sleg.read_expected(&mut buf, "test").await.unwrap();
    assert_eq!(buf, ok(0, 0x0002));
    // And nothing more reached the client.
    drop(cleg);
    let mut rest = Vec::new();
    assert_eq!(
        read_message(&mut client, Side::Client, &mut cseq, 1 << 20, &mut rest)
            .await
            .unwrap(),
        Read::Eof
    );
}

#[tokio::test]
async fn a_byte_limit_counts_payload_bytes() {
    let (mut cleg, mut sleg, mut client, mut server) = legs();
    let big = "x".repeat(1000);
    let packets = vec![text_row(&big), text_row(&big), text_row(&big), eof(0)];
    tokio::spawn(async move {
        let mut seq = 2;
        send(&mut server, &mut seq, &packets).await;
        server
    });
    let none = no_masks();
    let plans = [plan(false)];
    let r = Relay {
        binary: false,
        deprecate_eof: false,
        masks: None,
        plans: &plans,
        errors: &none,
        withhold: None,
        session: 1,
    };
    let limit = ResultLimit {
        bytes: Some(2500),
        bytes_name: Some("cap".into()),
        ..ResultLimit::default()
    };
    let mut counter = RowCounter::new(Some(limit));
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let end = rows(&mut cleg, &mut sleg, &mut buf, &mut out, &r, &mut counter)
        .await
        .unwrap();
    cleg.flush().await.unwrap();
    assert_eq!((end.rows, end.limited), (2, true));
    let mut cseq = 2;
    let got = receive(&mut client, &mut cseq, 3).await;
    let e = codec::parse_err(&got[2]).unwrap();
    assert!(e.message.contains("more than 2500 bytes"), "{}", e.message);
}

#[tokio::test]
async fn rows_are_masked_and_a_late_error_withheld() {
    let (mut cleg, mut sleg, mut client, mut server) = legs();
    let packets = vec![
        text_row("hunter2"),
        codec::err_packet(
            1292,
            Some("22007"),
            "Truncated incorrect INTEGER value: 'hunter2'",
        ),
    ];
    tokio::spawn(async move {
        let mut seq = 2;
        send(&mut server, &mut seq, &packets).await;
        server
    });
    let m = codec::all_detectors();
    let plans = [plan(true)];
    let w = results::withheld_error(4);
    let r = Relay {
        binary: false,
        deprecate_eof: false,
        masks: Some(&m),
        plans: &plans,
        errors: &m,
        withhold: Some(&w),
        session: 4,
    };
    let mut counter = RowCounter::new(None);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let end = rows(&mut cleg, &mut sleg, &mut buf, &mut out, &r, &mut counter)
        .await
        .unwrap();
    cleg.flush().await.unwrap();
    assert_eq!((end.rows, end.limited), (1, false));
    let error = end.error.unwrap();
    assert!(
        error.starts_with("ERROR 1292 (22007): interceptor:") && !error.contains("hunter2"),
        "the record keeps what the client got: {error}"
    );
    let mut cseq = 2;
    let got = receive(&mut client, &mut cseq, 2).await;
    assert_eq!(got[0], text_row("****"));
    let e = codec::parse_err(&got[1]).unwrap();
    assert_eq!(e.code, 1292);
    assert!(!e.message.contains("hunter2"), "{}", e.message);
}

#[tokio::test]
async fn later_results_are_drained_unseen() {
    let (_cleg, mut sleg, _client, mut server) = legs();
    let peer = tokio::spawn(async move {
        let mut seq = 2;
        // A result set with three rows, more to come.
        send(
            &mut server,
            &mut seq,
            &[
                vec![1],
                column_def("a"),
                eof(MORE),
                text_row("1"),
                text_row("2"),
                text_row("3"),
                eof(MORE),
            ],
        )
        .await;
        // LOAD DATA LOCAL: the proxy declines with an empty file.
        send(&mut server, &mut seq, &[b"\xfb/etc/hosts".to_vec()]).await;
        let mut file = Vec::new();
        assert_eq!(
            read_message(&mut server, Side::Server, &mut seq, 1 << 20, &mut file)
                .await
                .unwrap(),
            Read::Message
        );
        assert!(file.is_empty(), "an empty file");
        send(&mut server, &mut seq, &[ok(0, MORE)]).await;
        // Then an error that quotes a value.
        send(
            &mut server,
            &mut seq,
            &[codec::err_packet(
                1062,
                Some("23000"),
                "Duplicate entry 'hunter2' for key 'p'",
            )],
        )
        .await;
        server
    });
    let m = codec::all_detectors();
    let w = results::withheld_error(5);
    let mut buf = Vec::new();
    let d = drain_result(&mut sleg, &mut buf, false, false, None, &m)
        .await
        .unwrap();
    assert_eq!(
        d,
        Drained {
            end: Some(End::Set),
            rows: Some(3),
            status: MORE,
            error: None
        }
    );
    assert!(d.more());
    let d = drain_result(&mut sleg, &mut buf, false, false, None, &m)
        .await
        .unwrap();
    assert_eq!((d.end, d.rows, d.more()), (Some(End::Ok), Some(0), true));
    let d = drain_result(&mut sleg, &mut buf, false, false, Some(&w), &m)
        .await
        .unwrap();
    assert_eq!(d.end, None);
    assert!(!d.more());
    let error = d.error.unwrap();
    assert!(
        error.starts_with("ERROR 1062 (23000): interceptor:") && !error.contains("hunter2"),
        "{error}"
    );
    peer.await.unwrap();
}

#[tokio::test]
async fn drained_result_sets_under_deprecate_eof() {
    let (_cleg, mut sleg, _client, mut server) = legs();
    let mut end = ok(0, 0);
    end[0] = 0xfe;
    tokio::spawn(async move {
        let mut seq = 2;
        send(
            &mut server,
            &mut seq,
            &[
                vec![2],
                column_def("a"),
                column_def("b"),
                text_row("1"),
                end,
            ],
        )
        .await;
        server
    });
    let m = no_masks();
    let mut buf = Vec::new();
    let d = drain_result(&mut sleg, &mut buf, true, false, None, &m)
        .await
        .unwrap();
    assert_eq!((d.end, d.rows, d.more()), (Some(End::Set), Some(1), false));
}
