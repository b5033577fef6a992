//! `cargo xtask`: build images, CI checks, benchmarks.

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!("usage: cargo xtask <ci|build-images|bench>");
    };
    bail!("unknown xtask command {cmd:?}")
}
