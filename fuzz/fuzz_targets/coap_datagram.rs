//! Feeds arbitrary bytes to the CoAP datagram path the adapter owns, as the ingest listener and the client
//! see it: decode (with our checks on top of coap-lite), the ingest request checks, the options we read
//! (path, Block2, Observe, Content-Format, Max-Age), and the payload decoders of every format (text, JSON +
//! pointer, CBOR + pointer, SenML JSON/CBOR) plus the link-format parser. Nothing may panic, and every
//! message that decodes must survive encode -> decode unchanged.
#![no_main]

use fieldbridge_coap::content::{extract_all, Extract, Format};
use fieldbridge_coap::{ingest, probe, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = wire::decode(data) {
        let _ = ingest::check_request(&p);
        let _ = wire::uri_path(&p);
        let _ = wire::block2(&p);
        for o in [wire::opt::OBSERVE, wire::opt::CONTENT_FORMAT, wire::opt::MAX_AGE] {
            let _ = wire::uint_option(&p, o);
        }
        if let Ok(bytes) = wire::encode(&p) {
            let again = wire::decode(&bytes).expect("our own encoding decodes");
            assert_eq!(again, p, "encode -> decode changed the message");
        }
        payloads(&p.payload, wire::uint_option(&p, wire::opt::CONTENT_FORMAT).map(|c| c as u16));
    }
    // The payload decoders on the raw bytes too (most inputs are not valid CoAP headers).
    payloads(data, None);
});

fn payloads(payload: &[u8], cf: Option<u16>) {
    let specs: Vec<Extract> = [
        Format::Auto,
        Format::Text,
        Format::Json,
        Format::Cbor,
        Format::Raw,
        Format::SenmlJson,
        Format::SenmlCbor,
    ]
    .into_iter()
    .map(|format| Extract {
        format,
        pointer: if matches!(format, Format::Json | Format::Cbor) { "/a/0".into() } else { String::new() },
        senml_name: "d/t".into(),
    })
    .collect();
    let refs: Vec<&Extract> = specs.iter().collect();
    let _ = extract_all(payload, cf, &refs);
    if let Ok(text) = std::str::from_utf8(payload) {
        let _ = probe::parse_links(text);
    }
}
