//! `kiln bench`: measures a Kiln mount against a local directory of the same
//! disk, in one run, and prints each figure with the Kiln/local ratio.

/// Runs the benchmark with the arguments after `kiln bench`.
pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("kiln bench: not built yet")
}
