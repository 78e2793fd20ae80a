//! Feeds arbitrary bytes to the MQTT codec as a connection would see them: before CONNECT (no protocol yet)
//! and after it in either version, with a small maximum packet size. Nothing may panic, a failed or
//! incomplete decode must leave the buffer alone, and every packet that decodes must come back unchanged from
//! encode -> decode, with `encoded_len` equal to what `encode` wrote.
#![no_main]

use bytes::BytesMut;
use fieldbridge::mqtt::{decode, encode, encoded_len, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    for protocol in [None, Some(Protocol::V311), Some(Protocol::V5)] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.clone();
            match decode(&mut buf, protocol, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    assert!(
                        buf.len() < before.len(),
                        "a decoded packet consumed nothing"
                    );
                    check_roundtrip(&packet, protocol);
                    // Only CONNECT is acceptable before CONNECT, and only once.
                    if protocol.is_none() {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    assert_eq!(buf, before, "an incomplete or failed decode consumed input");
                    break;
                }
            }
        }
    }
});

fn check_roundtrip(packet: &Packet, protocol: Option<Protocol>) {
    let wire = match (packet, protocol) {
        (Packet::Connect(c), _) => c.protocol,
        (_, Some(p)) => p,
        (_, None) => panic!("{packet:?} decoded before CONNECT"),
    };
    let mut out = BytesMut::new();
    encode(packet, wire, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, wire),
        "encoded_len disagrees for {packet:?}"
    );
    let len = out.len();
    let again = decode(&mut out, protocol, u32::MAX)
        .unwrap_or_else(|e| panic!("re-encoded {packet:?} does not decode: {e}"))
        .unwrap_or_else(|| panic!("re-encoded {packet:?} is incomplete ({len} bytes)"));
    assert!(
        out.is_empty(),
        "re-encoded {packet:?} left {} bytes",
        out.len()
    );
    assert_eq!(&again, packet, "decode(encode(p)) != p");
}
