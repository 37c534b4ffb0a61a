//! `kiln`: one executable for the management daemon, brick processes, the
//! FUSE client and the CLI.

mod bench;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bench") {
        if let Err(e) = bench::run(&args[1..]) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return;
    }
    eprintln!("kiln: not yet wired");
    std::process::exit(1);
}
