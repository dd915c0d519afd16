use kos_config::*;
fn main() {
    for f in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = if text.contains("profile:") {
            text
        } else {
            format!("profile: standalone\n{text}")
        };
        match assemble(
            "x",
            &text,
            &f,
            &Overlays::default(),
            &Capabilities {
                postgres: true,
                ..Default::default()
            },
        ) {
            Ok(l) => {
                println!("{f}: OK {}", l.snapshot_id.short());
                for w in &l.warnings {
                    println!("  {w}");
                }
            }
            Err(d) => {
                println!("{f}: ERR");
                for e in &d.0 {
                    println!("  {e}");
                }
            }
        }
    }
}
