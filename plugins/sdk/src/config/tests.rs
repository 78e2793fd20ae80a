//! Parser and deserializer tests: positions, paths and the exact wording users will see.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::*;

fn parse(text: &str) -> ConfigNode {
    parse_yaml("f.yaml", text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errs(v: Vec<ConfigError>) -> Vec<String> {
    v.iter().map(|e| e.to_string()).collect()
}

#[test]
fn scalars_follow_the_core_schema() {
    let n = parse(
        "a: 1\nb: -0x1f\nc: 1.5\nd: .inf\ne: true\nf: ~\ng:\nh: yes\ni: '1'\nj: 0o17\nk: 1e3\nl: 99999999999999999999\nm: !!str 12\nn: 1.2.3\n",
    );
    let k = |key: &str| n.get(key).unwrap().kind.clone();
    assert_eq!(k("a"), NodeKind::Int(1));
    assert_eq!(k("b"), NodeKind::Int(-31));
    assert_eq!(k("c"), NodeKind::Float(1.5));
    assert_eq!(k("d"), NodeKind::Float(f64::INFINITY));
    assert_eq!(k("e"), NodeKind::Bool(true));
    assert_eq!(k("f"), NodeKind::Null);
    assert_eq!(k("g"), NodeKind::Null);
    assert_eq!(k("h"), NodeKind::String("yes".into()));
    assert_eq!(k("i"), NodeKind::String("1".into()));
    assert_eq!(k("j"), NodeKind::Int(15));
    assert_eq!(k("k"), NodeKind::Float(1000.0));
    assert_eq!(k("l"), NodeKind::Float(1e20));
    assert_eq!(k("m"), NodeKind::String("12".into()));
    assert_eq!(k("n"), NodeKind::String("1.2.3".into()));
}

#[test]
fn marks_and_paths() {
    let n = parse("devices:\n  - name: a\n    points:\n      - {name: t, address: 7}\n");
    let addr = &n.get("devices").unwrap().as_seq().unwrap()[0]
        .get("points")
        .unwrap()
        .as_seq()
        .unwrap()[0]
        .get("address")
        .unwrap();
    assert_eq!(addr.path, "devices[0].points[0].address");
    assert_eq!((addr.mark.line, addr.mark.col), (4, 28));
    let (key, _) = &n.get("devices").unwrap().as_seq().unwrap()[0]
        .as_map()
        .unwrap()[1];
    assert_eq!(key.path, "devices[0].points");
    assert_eq!((key.mark.line, key.mark.col), (3, 5));
    assert_eq!(n.mark.to_string(), "f.yaml:1:1");
}

#[test]
fn empty_file_is_null() {
    assert!(parse("").is_null());
    assert!(parse("# nothing\n").is_null());
}

#[test]
fn syntax_error_has_position() {
    let e = parse_yaml("f.yaml", "a:\n  b: 1\n c: 2\n").unwrap_err();
    assert_eq!(
        errs(e),
        ["f.yaml:3:2: YAML syntax error: while parsing a block mapping, did not find expected key; check the indentation of this line and the lines above it"]
    );
    let e = parse_yaml("f.yaml", "a:\n  b: [1, 2\n").unwrap_err();
    assert_eq!(e[0].path, "a.b");
}

#[test]
fn duplicate_keys_are_errors() {
    let p = parse_yaml_with("f.yaml", "a: 1\nb: 2\na: 3\n", &ParseOptions::default()).unwrap();
    assert_eq!(
        errs(p.errors),
        ["f.yaml:3:1: a: duplicate key `a` (first defined at line 1, column 1)"]
    );
    assert_eq!(p.root.get("a").unwrap().kind, NodeKind::Int(1));
}

#[test]
fn second_document_is_an_error() {
    let e = parse_yaml("f.yaml", "a: 1\n---\nb: 2\n").unwrap_err();
    assert!(e[0].message.contains("one YAML document"), "{e:?}");
}

#[test]
fn aliases_and_merge_keys() {
    let n = parse(
        "x-base: &base\n  type: u16\n  scale: 0.1\npoints:\n  - <<: *base\n    name: a\n    scale: 1\n  - *base\n",
    );
    let pts = n.get("points").unwrap().as_seq().unwrap();
    assert_eq!(pts[0].get("type").unwrap().as_str(), Some("u16"));
    assert_eq!(pts[0].get("scale").unwrap().kind, NodeKind::Int(1));
    assert_eq!(pts[0].get("type").unwrap().path, "points[0].type");
    // The mark still points at the anchored text.
    assert_eq!(pts[0].get("type").unwrap().mark.line, 2);
    assert_eq!(pts[1].get("scale").unwrap().path, "points[1].scale");
    assert_eq!(pts[0].as_map().unwrap().len(), 3);
}

#[test]
fn bad_merge_and_unknown_tags() {
    let p = parse_yaml_with(
        "f.yaml",
        "a:\n  <<: 3\nb: !foo x\n",
        &ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(
        errs(p.errors),
        [
            "f.yaml:2:3: a.<<: the merge key `<<` takes a mapping or a list of mappings, found an integer",
            "f.yaml:3:4: b: unsupported tag `!foo`",
        ]
    );
}

#[test]
fn alias_bomb_is_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = parse_yaml("f.yaml", &text).unwrap_err();
    assert!(e[0].message.contains("more than"), "{e:?}");
}

#[test]
fn env_substitution() {
    let env = |k: &str| match k {
        "PORT" => Some("1883".to_string()),
        "PASS" => Some("123456".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let opts = ParseOptions { env: Some(&env) };
    let p = parse_yaml_with(
        "f.yaml",
        "port: ${PORT}\npass: \"${PASS}\"\nurl: mqtt://h:${PORT}/x\nd: ${NOPE:-dflt}\ne: ${EMPTY:-z}\nlit: $${PORT}\nmissing: ${NOPE}\nbad: ${1X}\nopen: ${PORT\n${KEY}: 1\n",
        &opts,
    )
    .unwrap();
    let r = &p.root;
    assert_eq!(r.get("port").unwrap().kind, NodeKind::Int(1883));
    assert_eq!(r.get("pass").unwrap().as_str(), Some("123456"));
    assert_eq!(r.get("url").unwrap().as_str(), Some("mqtt://h:1883/x"));
    assert_eq!(r.get("d").unwrap().as_str(), Some("dflt"));
    assert_eq!(r.get("e").unwrap().as_str(), Some("z"));
    assert_eq!(r.get("lit").unwrap().as_str(), Some("${PORT}"));
    assert_eq!(r.get("missing").unwrap().as_str(), Some("${NOPE}"));
    assert!(r.get("${KEY}").is_some(), "keys are not substituted");
    assert_eq!(
        errs(p.errors),
        [
            "f.yaml:7:10: missing: environment variable `NOPE` is not set",
            "f.yaml:8:6: bad: invalid environment variable reference `${1X}`: expected `${NAME}` or `${NAME:-default}`",
            "f.yaml:9:7: open: unterminated `${` in `${PORT` (write `$${` for a literal `${`)",
        ]
    );
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Point {
    name: String,
    address: u16,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    kind: Kind,
    #[serde(default, with = "serde_option_duration")]
    every: Option<Duration>,
}

#[derive(Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    Holding,
    Input,
    Window(u32),
}

#[test]
fn deserialize_ok() {
    let n = parse("name: t\naddress: 40\nscale: 2\nkind: {window: 3}\nevery: 1m30s\n");
    let p: Point = n.deserialize().unwrap();
    assert_eq!(
        p,
        Point {
            name: "t".into(),
            address: 40,
            scale: Some(2.0),
            kind: Kind::Window(3),
            every: Some(Duration::from_secs(90)),
        }
    );
}

fn first_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
    let n = parse(text);
    n.deserialize::<T>().unwrap_err().to_string()
}

#[test]
fn deserialize_error_positions() {
    assert_eq!(
        first_err::<Point>("name: t\nadress: 4\n"),
        "f.yaml:2:1: adress: unknown key `adress`, did you mean `address`? expected one of: name, address, scale, kind, every"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: x\n"),
        "f.yaml:2:10: address: expected an integer, found a string"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 70000\n"),
        "f.yaml:2:10: address: expected an integer from 0 to 65535, found 70000"
    );
    assert_eq!(
        first_err::<Point>("x:\n  name: t\n"),
        "f.yaml:1:1: x: unknown key `x`, expected one of: name, address, scale, kind, every"
    );
    assert_eq!(
        first_err::<Point>("name: t\nscale: 2\n"),
        "f.yaml:1:1: missing required key `address`"
    );
    assert_eq!(
        first_err::<Point>("name: 12\naddress: 1\n"),
        "f.yaml:1:7: name: expected a string, found an integer (put it in quotes to make it text)"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 1\nkind: holdng\n"),
        "f.yaml:3:7: kind: unknown value `holdng`, did you mean `holding`? expected one of: holding, input, window"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 1\nkind: window\n"),
        "f.yaml:3:7: kind: `window` needs a value: write it as `window: <value>`"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 1\nkind: {input: 3}\n"),
        "f.yaml:3:15: kind.input: `input` takes no value: write just `input`"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 1\nkind: 3\n"),
        "f.yaml:3:7: kind: expected one of: holding, input, window, found an integer"
    );
    assert_eq!(
        first_err::<Point>("name: t\naddress: 1\nevery: 5\n"),
        "f.yaml:3:8: every: invalid duration `5`: missing unit (write e.g. `5s`; units: ms, s, m, h or d)"
    );
    assert_eq!(
        first_err::<Point>("- 1\n"),
        "f.yaml:1:1: expected a mapping, found a list"
    );
    assert_eq!(
        first_err::<Vec<bool>>("- true\n- yes\n"),
        "f.yaml:2:3: [1]: expected a boolean (`true` or `false`), found a string"
    );
}

#[test]
fn deserialize_all_reports_everything() {
    let n = parse("- name: t\n  adress: 4\n  scale: x\n- name: u\n  address: -1\n- {}\n");
    let e = n.deserialize_all::<Vec<Point>>().unwrap_err();
    assert_eq!(
        errs(e),
        [
            "f.yaml:1:3: [0]: missing required key `address`",
            "f.yaml:2:3: [0].adress: unknown key `adress`, did you mean `address`? expected one of: name, address, scale, kind, every",
            "f.yaml:3:10: [0].scale: expected a number, found a string",
            "f.yaml:5:12: [1].address: expected an integer from 0 to 65535, found -1",
            // serde stops at the first missing key of a mapping; the next one shows up once it is added.
            "f.yaml:6:3: [2]: missing required key `name`",
        ]
    );
}

#[test]
fn hidden_entries_do_not_cause_missing_key_noise() {
    let n = parse("name: t\naddress: nope\n");
    let e = n.deserialize_all::<Point>().unwrap_err();
    assert_eq!(
        errs(e),
        ["f.yaml:2:10: address: expected an integer, found a string"]
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Holder {
    conn: ConfigNode,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    size: Option<HumanSize>,
}

#[test]
fn nodes_and_spans_survive_deserialization() {
    let n = parse("conn:\n  host: h\nlabels:\n  site: north\nsize: 512MiB\n");
    let h: Holder = n.deserialize().unwrap();
    assert_eq!(h.conn.path, "conn");
    assert_eq!(h.conn.get("host").unwrap().mark.line, 2);
    let site = &h.labels["site"];
    assert_eq!(site.value, "north");
    assert_eq!(
        (site.mark.line, site.mark.col, site.path.as_str()),
        (4, 9, "labels.site")
    );
    assert_eq!(h.size, Some(HumanSize(512 << 20)));
    assert_eq!(
        site.error("bad").to_string(),
        "f.yaml:4:9: labels.site: bad"
    );
}

#[test]
fn nodes_from_other_formats_have_no_position() {
    let v: ConfigNode = serde_json::from_str(r#"{"a": [1, "x", null]}"#).unwrap();
    assert_eq!(v.get("a").unwrap().as_seq().unwrap().len(), 3);
    let s: Spanned<u16> = serde_json::from_str("7").unwrap();
    assert_eq!(s.value, 7);
    assert_eq!(s.mark.line, 0);
}

#[test]
fn misspelled_core_point_key_is_suggested_to_adapters() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Spec {
        address: u16,
    }
    let n = parse("devices:\n  - points:\n      - address: 1\n        scael: 2\n");
    let point = &n.get("devices").unwrap().as_seq().unwrap()[0]
        .get("points")
        .unwrap()
        .as_seq()
        .unwrap()[0];
    assert_eq!(
        point.deserialize::<Spec>().unwrap_err().message,
        "unknown key `scael`, did you mean `scale`? expected one of: address"
    );
}

#[test]
fn null_reads_as_empty_collections() {
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Opt {
        a: u8,
        b: Vec<u8>,
    }
    let n = parse("x:\n");
    let o: Opt = n.get("x").unwrap().deserialize().unwrap();
    assert_eq!((o.a, o.b.len()), (0, 0));
}

#[test]
fn partial_values_keep_what_was_fine() {
    let n = parse("name: t\naddress: 4\nscale: x\nzzz: 1\n");
    let (v, e) = n.deserialize_partial::<Point>();
    let v = v.unwrap();
    assert_eq!((v.address, v.scale), (4, None));
    assert_eq!(e.len(), 2);
    let n = parse("name: t\naddress: x\n");
    let (v, e) = n.deserialize_partial::<Point>();
    assert!(v.is_none());
    assert_eq!(
        errs(e),
        ["f.yaml:2:10: address: expected an integer, found a string"]
    );
}
