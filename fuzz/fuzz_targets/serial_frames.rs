//! Feeds arbitrary bytes to the serial adapter's framers and parsers, as a device on a noisy line would. The
//! first byte picks how the rest is cut into reads. Nothing may panic, no framer may buffer more than its
//! bound, every frame respects `max_frame`, and every parser and field extraction must return (a value or an
//! error) on whatever frame comes out.
#![no_main]

use fieldbridge_serial::binary::{BinType, Field, Order};
use fieldbridge_serial::checksum::{Algorithm, ChecksumSpec, Encoding};
use fieldbridge_serial::framing::{Event, Framer, FramingSpec, Terminator};
use fieldbridge_serial::parse::{extract, Parser, Source, ValueType};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const MAX: usize = 64;

fn framings() -> Vec<FramingSpec> {
    vec![
        FramingSpec::Line {
            terminator: Terminator::Any,
            max_frame: MAX,
        },
        FramingSpec::Line {
            terminator: Terminator::CrLf,
            max_frame: MAX,
        },
        FramingSpec::Line {
            terminator: Terminator::Custom(b"<E>".to_vec()),
            max_frame: MAX,
        },
        FramingSpec::Fixed {
            length: 7,
            start: Some(vec![0xAA]),
        },
        FramingSpec::Fixed {
            length: 3,
            start: None,
        },
        FramingSpec::Delimited {
            start: vec![0x02],
            end: vec![0x03],
            max_frame: MAX,
            keep_delimiters: false,
        },
        FramingSpec::Delimited {
            start: b"<<".to_vec(),
            end: b">>".to_vec(),
            max_frame: MAX,
            keep_delimiters: true,
        },
        FramingSpec::LengthPrefixed {
            start: Some(vec![0xAA, 0x55]),
            length_offset: 2,
            length_size: 1,
            little_endian: false,
            length_adjust: 2,
            max_frame: MAX,
        },
        FramingSpec::LengthPrefixed {
            start: None,
            length_offset: 0,
            length_size: 2,
            little_endian: true,
            length_adjust: -1,
            max_frame: MAX,
        },
    ]
}

fn parsers() -> Vec<Parser> {
    let mut p = vec![
        Parser::Text,
        Parser::Regex(regex::Regex::new(r"^(?P<a>[-+]?\d+(\.\d+)?)\s*(?P<u>\w+)?$").unwrap()),
        Parser::Csv {
            delimiter: ',',
            columns: vec!["a".into(), "b".into()],
        },
        Parser::Json,
        Parser::KeyValue {
            separator: None,
            assign: "=".into(),
        },
        Parser::Nmea {
            require_checksum: true,
        },
        Parser::Nmea {
            require_checksum: false,
        },
    ];
    for (alg, _) in Algorithm::ALL {
        p.push(Parser::Binary {
            checksum: Some(ChecksumSpec {
                from: 1,
                ..ChecksumSpec::new(alg)
            }),
            min_length: 2,
        });
    }
    p.push(Parser::Binary {
        checksum: Some(ChecksumSpec {
            encoding: Encoding::AsciiHex,
            from: -9,
            to: Some(-2),
            at: Some(-2),
            ..ChecksumSpec::new(Algorithm::Xor8)
        }),
        min_length: 0,
    });
    p
}

fn sources() -> Vec<Source> {
    let mut s = vec![
        Source::Field("a".into()),
        Source::Field("text".into()),
        Source::Field("GGA.latitude".into()),
        Source::Field("RMC.valid".into()),
        Source::Pointer("/a/0/b".into()),
        Source::Pointer("".into()),
    ];
    for (ty, _) in BinType::ALL {
        for offset in [0, 1, -1, -8] {
            s.push(Source::Binary(Field {
                ty,
                offset,
                order: Order::Cdab,
                length: ty.size().unwrap_or(5),
            }));
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(split % 16) + 1;
    // Built once: compiling the regex per input would dominate the run.
    static PARSERS: LazyLock<Vec<Parser>> = LazyLock::new(parsers);
    static SOURCES: LazyLock<Vec<Source>> = LazyLock::new(sources);
    let (parsers, sources) = (&*PARSERS, &*SOURCES);
    for spec in framings() {
        let max = spec.max_frame();
        let mut f = Framer::new(spec);
        let mut out = Vec::new();
        for chunk in rest.chunks(step) {
            f.push(chunk, &mut out);
            assert!(
                f.buffered() <= max + 3,
                "framer holds {} bytes (max {max})",
                f.buffered()
            );
        }
        for e in out {
            let Event::Frame(frame) = e else { continue };
            assert!(
                frame.len() <= max + 4,
                "frame of {} bytes (max {max})",
                frame.len()
            );
            for p in parsers {
                if let Ok(parsed) = p.parse(&frame) {
                    for s in sources {
                        for ty in [ValueType::Auto, ValueType::Float, ValueType::Bool] {
                            let _ = extract(&parsed, s, ty);
                        }
                    }
                }
            }
        }
        f.reset();
        assert_eq!(f.buffered(), 0);
    }
});
