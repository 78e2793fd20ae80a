//! Configuration errors: every problem reported in one run, at its line and column, with its key path.
use crate::util::config_errors;

fn has(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errors:#?}"
    );
}

#[test]
fn every_problem_at_its_position() {
    let e = config_errors(
        r#"
name: broken
protocol: serial
connection:
  port: /dev/ttyUSB0
  baud: 0
  data_bits: 9
  parity: mark
  framing: {type: fixed}
  parser: {type: regex, pattern: '(?P<w>[0-9]+'}
points:
  - {name: a, field: w}
  - {name: b, writable: true, field: x}
  - {name: c, at: 2}
"#,
    );
    has(&e, "6:9: connection.baud: baud must be above 0");
    has(
        &e,
        "7:14: connection.data_bits: data_bits must be 5, 6, 7 or 8, not 9",
    );
    has(&e, "8:11: connection.parity: unknown parity `mark`");
    has(&e, "connection.framing: `type: fixed` needs `length:`");
    has(&e, "10:34: connection.parser.pattern: invalid regex");
    has(&e, "has no `write:`");
    has(&e, "`at` applies to binary frames");
}

#[test]
fn binary_points_and_requests() {
    let e = config_errors(
        r#"
name: bin
protocol: serial
connection:
  port: /dev/ttyS0
  framing: {type: length_prefixed, length_size: 3}
  parser: {type: binary, checksum: {type: md5}}
  requests:
    - {name: a, send: 'A\q'}
    - {name: a, send_hex: "0"}
    - {name: c}
points:
  - {name: x, at: 0, type: u24, request: a}
  - {name: y, at: 0, type: bytes, request: a}
  - {name: z, field: f, request: nope}
  - {name: w, at: 0, type: u8}
"#,
    );
    has(&e, "length_size must be 1, 2 or 4");
    has(&e, "unknown checksum `md5`");
    has(&e, "unknown escape");
    has(&e, "request `a` is defined twice");
    has(&e, "odd number of hex digits");
    has(&e, "a request needs `send:`");
    has(&e, "unknown binary type `u24`");
    has(&e, "`type: bytes` needs `length:`");
    has(&e, "no request named `nope`");
    has(&e, "must say which request it reads from");
}

#[test]
fn unknown_keys_and_misplaced_options() {
    let e = config_errors(
        r#"
name: typo
protocol: serial
poll_interval: 1s
connection:
  port: /dev/ttyS0
  baudrate: 9600
  silence_timeout: 0s
  framing: {type: line, length: 4, terminator: '\q'}
  parser: {type: csv, pattern: x, columns: [a, a]}
points:
  - {name: a, field: nine}
  - {name: b, field: a, reply: OK, poll_interval: 5s}
"#,
    );
    has(&e, "unknown key `baudrate`");
    has(&e, "silence_timeout must be above 0");
    has(&e, "`length` only applies to framing type fixed");
    has(&e, "unknown escape");
    has(&e, "`pattern` does not apply to the `csv` parser");
    has(&e, "column `a` is named twice");
    has(&e, "`nine` is neither a column number nor one of `columns`");
    has(&e, "`reply` applies to writes");
    has(&e, "sets `poll_interval`");
}

#[test]
fn missing_connection() {
    let e = config_errors("name: x\nprotocol: serial\npoints: [{name: a}]\n");
    has(&e, "a serial device needs a `connection:`");
}
