//! Writes the logmatch area's two logs into a directory, to profile
//! `xban regex` on them: `cargo run -p xban-bench --release --example
//! logmatch_logs -- DIR`.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: logmatch_logs DIR"))?;
    for log in xban_bench::write_logmatch_logs(std::path::Path::new(&dir))? {
        println!("{}", log.display());
    }
    Ok(())
}
