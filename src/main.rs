#![forbid(unsafe_code)]

fn main() {
    println!("fieldbridge {}", env!("CARGO_PKG_VERSION"));
}
