//! The HTTP and wasm figures of `cargo dev bench` (filled in below).

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
pub struct Figures {}

impl Figures {
    pub fn print(&self) {}
}

pub fn measure(_root: &Path, _options: &super::Options) -> Result<Figures> {
    bail!("not written yet")
}
