//! Diagnostics: every configuration problem names file, line, column and the YAML path.

use std::fmt;

use serde::Serialize;

use crate::tree::Location;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Most problems one load or validation lists. A document of 1 MiB could otherwise hold
/// ~45 000 unknown keys: as many diagnostics, ~100 MiB at the peak and an 18 MB answer
/// (issue 10). Past the cap, one last error says that more were found.
pub const MAX_DIAGNOSTICS: usize = 1000;

/// Appends `d` to `list`, keeping at most [`MAX_DIAGNOSTICS`] of them plus one error in place
/// of the rest. That one is an error even when the rest are warnings, so dropping a problem
/// can never make an invalid document pass.
pub fn push_capped(list: &mut Vec<Diagnostic>, d: Diagnostic) {
    match list.len().cmp(&MAX_DIAGNOSTICS) {
        std::cmp::Ordering::Less => list.push(d),
        std::cmp::Ordering::Equal => list.push(Diagnostic::error(
            d.location,
            "",
            format!(
                "too many problems: only the first {MAX_DIAGNOSTICS} are listed; fix them and try again"
            ),
        )),
        std::cmp::Ordering::Greater => {}
    }
}

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    /// Dotted YAML path (`federation.klp.enabled`, `llms[1]`); empty for the document itself.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(location: Location, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            location,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn warning(
        location: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            location,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.path.is_empty() {
            write!(f, "{}: {sev}{}", self.location, self.message)
        } else {
            write!(f, "{}: {sev}{}: {}", self.location, self.path, self.message)
        }
    }
}

/// JSON form used by the HTTP API and `kos config validate --format json`.
#[derive(Serialize)]
struct DiagnosticJson<'a> {
    severity: Severity,
    file: &'a str,
    line: u32,
    column: u32,
    path: &'a str,
    message: &'a str,
}

impl Serialize for Diagnostic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DiagnosticJson {
            severity: self.severity,
            file: &self.location.source,
            line: self.location.line,
            column: self.location.column,
            path: &self.path,
            message: &self.message,
        }
        .serialize(s)
    }
}

/// All errors and warnings of one load or validation, in source order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Adds a problem (at most [`MAX_DIAGNOSTICS`] are kept: see [`push_capped`]).
    pub fn push(&mut self, d: Diagnostic) {
        push_capped(&mut self.0, d);
    }

    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        for d in ds {
            push_capped(&mut self.0, d);
        }
    }

    /// Sorts by file, line, column and drops exact duplicates.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (
                a.location.source.as_ref(),
                a.location.line,
                a.location.column,
                &a.path,
            )
                .cmp(&(
                    b.location.source.as_ref(),
                    b.location.line,
                    b.location.column,
                    &b.path,
                ))
        });
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

/// "did you mean" for a misspelt key or value.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
