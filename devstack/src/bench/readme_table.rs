//! The README's benchmark table, between two markers, rewritten by a full
//! `cargo dev bench` run. Each part of the bench (the SQL figures in
//! `bench.rs`, the HTTP and module figures) contributes [`Row`]s; this file
//! only lays them out, so a new part adds rows without touching it.

use anyhow::{bail, Context, Result};
use std::path::Path;

pub const BEGIN: &str = "<!-- bench:begin (cargo dev bench writes this table) -->";
pub const END: &str = "<!-- bench:end -->";

/// One line of the table. `regimes` are the two disk regimes' cells (as
/// configured, CPU-bound); a figure that has no regimes (module size) puts
/// its value in the first and "-" in the second.
pub struct Row {
    pub figure: String,
    pub versus: String,
    pub target: String,
    pub regimes: [String; 2],
    pub met: String,
}

pub fn render(rows: &[Row], note: &str) -> String {
    let mut text = String::new();
    text.push_str(BEGIN);
    text.push('\n');
    text.push_str("| figure | creditgate vs | target | as configured | CPU-bound | met |\n");
    text.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.figure, row.versus, row.target, row.regimes[0], row.regimes[1], row.met
        ));
    }
    text.push_str(&format!(
        "\nRatio: creditgate / baseline (tps; req/s over HTTP). The HTTP and module rows have no disk regime. {note}.\n"
    ));
    text.push_str(END);
    text
}

/// Replaces the text between the markers of `readme` (markers included).
pub fn write(readme: &Path, rows: &[Row], note: &str) -> Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| readme.display().to_string())?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no benchmark markers", readme.display());
    };
    if end < begin {
        bail!("{}: the benchmark markers are out of order", readme.display());
    }
    let updated = format!("{}{}{}", &text[..begin], render(rows, note), &text[end + END.len()..]);
    std::fs::write(readme, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("creditgate-readme-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        std::fs::write(&readme, format!("before\n{BEGIN}\nold\n{END}\nafter\n")).unwrap();
        let row = Row {
            figure: "charge".into(),
            versus: "creditgate vs seed".into(),
            target: ">=1.0x".into(),
            regimes: ["1.10x".into(), "1.20x".into()],
            met: "yes".into(),
        };
        write(&readme, &[row], "note").unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert!(text.starts_with("before\n") && text.ends_with("\nafter\n"));
        assert!(text.contains("| charge | creditgate vs seed | >=1.0x | 1.10x | 1.20x | yes |"));
        assert!(!text.contains("old"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
