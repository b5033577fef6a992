//! `relaunch` command-line entry point.

fn main() {
    std::process::exit(relaunch_cli());
}

fn relaunch_cli() -> i32 {
    eprintln!("relaunch: no command yet");
    2
}
