//! Every revision's golden frames (fixtures/vectors/<revision>/, written by
//! the reference peer, not by our encoder): the decoders read them and the
//! encoders write them back byte for byte. Frames the peer's vectors do not
//! cover (the 2022c 1103 whose payload_size leaves the content out, 2024
//! packets numbered from 0 or with the total first) are written here by
//! hand from PROTOCOL.md §9 / §9.1.

use sealdrop_protocol::consts::*;
use sealdrop_protocol::decode::{RequestDecoder, RequestEvent, ResponseDecoder};
use sealdrop_protocol::error::DecodeError;
use sealdrop_protocol::message::{
    encode_file_header, encode_packet_header, PacketHeader, Request, RequestKind,
};
use sealdrop_protocol::{ClientId, FixedName, Revision};

fn vector(rev: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/vectors/{rev}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn top(name: &str) -> Vec<u8> {
    vector(".", name)
}

fn alice() -> ClientId {
    ClientId(top("client_id.bin").try_into().unwrap())
}

/// Decodes one whole request frame: the events, content joined.
fn decode_request(rev: Revision, frame: &[u8]) -> (Vec<RequestEvent<'static>>, Vec<u8>) {
    let mut d = RequestDecoder::new(rev, MAX_CONTENT_SIZE as u64);
    let mut input = frame;
    let mut events = Vec::new();
    let mut content = Vec::new();
    while let Some(e) = d.decode(&mut input).expect("the vector decodes") {
        match e {
            RequestEvent::FileData(data) => content.extend_from_slice(data),
            RequestEvent::Request(h, r) => events.push(RequestEvent::Request(h, r)),
            RequestEvent::FileStart {
                header,
                content_size,
                file_name,
                data_len,
                packet,
            } => events.push(RequestEvent::FileStart {
                header,
                content_size,
                file_name,
                data_len,
                packet,
            }),
            RequestEvent::FileEnd => events.push(RequestEvent::FileEnd),
        }
    }
    assert!(input.is_empty(), "{rev}: bytes left after the frame");
    assert!(d.is_between_frames());
    (events, content)
}

/// Every non-file request vector of a revision decodes to the right kind
/// and encodes back to the same bytes.
#[test]
fn every_revisions_fixed_requests_round_trip() {
    let kinds = [
        (RequestKind::Register, "alice"),
        (RequestKind::PublicKey, "alice"),
        (RequestKind::Reconnect, "alice"),
        (RequestKind::CrcOk, "plain_1000.bin"),
        (RequestKind::CrcBad, "plain_1000.bin"),
        (RequestKind::CrcGiveUp, "plain_1000.bin"),
    ];
    for rev in Revision::ALL {
        for (kind, text) in kinds {
            let Some(code) = rev.request_code(kind) else {
                assert_eq!((rev, kind), (Revision::R2022c, RequestKind::Reconnect));
                continue;
            };
            let frame = vector(rev.name(), &format!("request_{code}.bin"));
            let (events, _) = decode_request(rev, &frame);
            let [RequestEvent::Request(header, request)] = &events[..] else {
                panic!("{rev} {code}: {events:?}");
            };
            assert_eq!(request.kind(), kind, "{rev} {code}");
            let name = match request {
                Request::Register { name }
                | Request::Reconnect { name }
                | Request::PublicKey { name, .. } => name,
                Request::CrcOk { file_name }
                | Request::CrcBad { file_name }
                | Request::CrcGiveUp { file_name } => file_name,
            };
            assert_eq!(name.text(), text.as_bytes());
            let mut out = Vec::new();
            request.encode(rev, &header.client_id, &mut out);
            assert_eq!(out, frame, "{rev} {code} re-encoded");
        }
    }
}

#[test]
fn single_message_files_of_2022c_2023a_2023c_round_trip() {
    for rev in [Revision::R2022c, Revision::R2023a, Revision::R2023c] {
        let code = rev.request_code(RequestKind::SendFile).unwrap();
        let frame = vector(rev.name(), &format!("request_{code}.bin"));
        let (events, content) = decode_request(rev, &frame);
        let [RequestEvent::FileStart {
            header,
            content_size,
            file_name,
            data_len,
            packet: None,
        }, RequestEvent::FileEnd] = &events[..]
        else {
            panic!("{rev}: {events:?}");
        };
        assert_eq!((*content_size, *data_len), (1008, 1008));
        assert_eq!(header.client_id, alice());
        assert_eq!(content, vector(rev.name(), "cipher_1000.bin"));
        let mut out = Vec::new();
        encode_file_header(rev, &header.client_id, *content_size, file_name, &mut out);
        out.extend_from_slice(&content);
        assert_eq!(out, frame, "{rev}");
    }
}

#[test]
fn packets_of_2024a_and_2024c_round_trip() {
    for rev in [Revision::R2024a, Revision::R2024c] {
        let code = rev.request_code(RequestKind::SendFile).unwrap();
        let mut all = Vec::new();
        for (n, range) in [(1u16, 0..512), (2, 512..1008)] {
            let frame = vector(rev.name(), &format!("request_{code}_packet{n}.bin"));
            let (events, content) = decode_request(rev, &frame);
            let [RequestEvent::FileStart {
                header,
                file_name,
                data_len,
                packet: Some(packet),
                ..
            }, RequestEvent::FileEnd] = &events[..]
            else {
                panic!("{rev}: {events:?}");
            };
            let want = PacketHeader {
                content_size: 1008,
                orig_size: 1000,
                first: n,
                second: 2,
            };
            assert_eq!(*packet, want, "{rev} packet {n}");
            assert_eq!(*data_len as usize, range.len());
            let cipher = vector(rev.name(), "cipher_1000.bin");
            assert_eq!(content, cipher[range]);
            let mut out = Vec::new();
            encode_packet_header(
                rev,
                &header.client_id,
                packet,
                file_name,
                *data_len,
                &mut out,
            );
            out.extend_from_slice(&content);
            assert_eq!(out, frame, "{rev} packet {n}");
            all.extend_from_slice(&content);
        }
        assert_eq!(all, vector(rev.name(), "cipher_1000.bin"));
    }
}

/// Every response vector decodes in its own revision and encodes back.
#[test]
fn every_revisions_responses_round_trip() {
    for rev in Revision::ALL {
        let base = rev.spec().response_base;
        for offset in 0..rev.spec().response_count {
            let code = base + offset;
            let frame = vector(rev.name(), &format!("response_{code}.bin"));
            let mut d = ResponseDecoder::new(rev);
            let mut input = &frame[..];
            let response = d.decode(&mut input).unwrap().expect("one whole response");
            assert!(input.is_empty());
            assert_eq!(rev.response_code(response.kind()), Some(code));
            let mut out = Vec::new();
            response.encode(rev, &mut out);
            assert_eq!(out, frame, "{rev} {code}");
        }
        // The next code past the revision's responses is unknown to it.
        let mut d = ResponseDecoder::new(rev);
        let mut frame = vec![3];
        frame.extend_from_slice(&(base + rev.spec().response_count).to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            d.decode(&mut &frame[..]),
            Err(DecodeError::UnknownCode { .. })
        ));
    }
}

/// A frame of one revision is an unknown code in a revision with other
/// codes: 2024c's 825 is nothing in 2023c, 2023c's 1027 nothing in 2022c.
#[test]
fn codes_of_other_revisions_are_unknown() {
    let cases = [
        (Revision::R2023c, "2024c", "request_825.bin"),
        (Revision::R2024c, "2023c", "request_1025.bin"),
        (Revision::R2022c, "2023a", "request_1102.bin"),
        (Revision::R2023c, "2023a", "request_1100.bin"),
    ];
    for (rev, folder, file) in cases {
        let frame = vector(folder, file);
        let mut d = RequestDecoder::new(rev, MAX_CONTENT_SIZE as u64);
        assert!(
            matches!(
                d.decode(&mut &frame[..]),
                Err(DecodeError::UnknownCode { .. })
            ),
            "{rev} {folder}/{file}"
        );
    }
}

/// §9.1: one public 2022c client declares payload_size 275 (id + size +
/// name) and sends the content after it. Written by hand from the 2022c
/// vector: the same frame with its payload_size cut to 275.
#[test]
fn a_2022c_1103_whose_payload_leaves_the_content_out_is_read_whole() {
    let mut frame = vector("2022c", "request_1103.bin");
    frame[19..23].copy_from_slice(&275u32.to_le_bytes());
    let (events, content) = decode_request(Revision::R2022c, &frame);
    let [RequestEvent::FileStart {
        content_size: 1008,
        data_len: 1008,
        ..
    }, RequestEvent::FileEnd] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(content, vector("2022c", "cipher_1000.bin"));
}

#[test]
fn a_2022c_payload_must_repeat_the_headers_client_id() {
    for file in ["request_1103.bin", "request_1104.bin"] {
        let mut frame = vector("2022c", file);
        frame[REQUEST_HEADER_LEN] ^= 1;
        let mut d = RequestDecoder::new(Revision::R2022c, MAX_CONTENT_SIZE as u64);
        assert_eq!(
            d.decode(&mut &frame[..]),
            Err(DecodeError::IdMismatch),
            "{file}"
        );
    }
}

/// Packets numbered from 0, and with total_packets first: the decoder
/// hands the two u16 over as they travel (the session decides what they
/// mean).
#[test]
fn packet_fields_are_read_in_wire_order() {
    let name = FixedName::new(b"f.bin").unwrap();
    for (first, second) in [(0u16, 3u16), (3, 1)] {
        let p = PacketHeader {
            content_size: 48,
            orig_size: 40,
            first,
            second,
        };
        let mut frame = Vec::new();
        encode_packet_header(Revision::R2024c, &alice(), &p, &name, 16, &mut frame);
        frame.extend_from_slice(&[7; 16]);
        // By hand: header, then 48, 40, first, second, name, content.
        let mut hand = alice().0.to_vec();
        hand.push(3);
        hand.extend_from_slice(&828u16.to_le_bytes());
        hand.extend_from_slice(&(267u32 + 16).to_le_bytes());
        hand.extend_from_slice(&48u32.to_le_bytes());
        hand.extend_from_slice(&40u32.to_le_bytes());
        hand.extend_from_slice(&first.to_le_bytes());
        hand.extend_from_slice(&second.to_le_bytes());
        hand.extend_from_slice(name.raw());
        hand.extend_from_slice(&[7; 16]);
        assert_eq!(frame, hand);
        let (events, content) = decode_request(Revision::R2024c, &frame);
        assert!(matches!(
            &events[0],
            RequestEvent::FileStart { packet: Some(q), data_len: 16, .. } if *q == p
        ));
        assert_eq!(content, [7; 16]);
    }
}

#[test]
fn an_empty_packet_or_a_zero_content_size_is_malformed() {
    let name = FixedName::new(b"f.bin").unwrap();
    let p = PacketHeader {
        content_size: 16,
        orig_size: 0,
        first: 1,
        second: 1,
    };
    let mut frame = Vec::new();
    encode_packet_header(Revision::R2024a, &alice(), &p, &name, 0, &mut frame);
    let mut d = RequestDecoder::new(Revision::R2024a, MAX_CONTENT_SIZE as u64);
    assert!(matches!(
        d.decode(&mut &frame[..]),
        Err(DecodeError::BadContentSize { .. })
    ));
    let zero = PacketHeader {
        content_size: 0,
        ..p
    };
    let mut frame = Vec::new();
    encode_packet_header(Revision::R2024a, &alice(), &zero, &name, 16, &mut frame);
    frame.extend_from_slice(&[0; 16]);
    let mut d = RequestDecoder::new(Revision::R2024a, MAX_CONTENT_SIZE as u64);
    assert!(matches!(
        d.decode(&mut &frame[..]),
        Err(DecodeError::BadContentSize { .. })
    ));
}
