#![forbid(unsafe_code)]

fn main() {
    println!("fieldbridge-bench");
}
