//! `kiln`: one executable for the management daemon, brick processes, the
//! FUSE client and the CLI.

fn main() {
    eprintln!("kiln: not yet wired");
    std::process::exit(1);
}
