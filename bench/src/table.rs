//! The one table the bench prints: what, figure, unit, reference, ratio,
//! target, verdict.

use std::fmt::Write as _;

/// A target a row is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// No target: the row is information for the others.
    None,
    /// ratio >= x.
    RatioAtLeast(f64),
    /// figure < x.
    Below(f64),
    /// figure >= x.
    AtLeast(f64),
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The measured figure, if the step ran.
    pub figure: Option<f64>,
    /// Unit of the figure.
    pub unit: String,
    /// The reference it is compared with, as text (figure and source).
    pub reference: String,
    /// figure / reference, when there is one.
    pub ratio: Option<f64>,
    /// The target.
    pub target: Target,
    /// Why the figure is missing.
    pub skipped: Option<String>,
}

impl Row {
    /// A row without reference or target.
    pub fn info(what: &str, figure: f64, unit: &str) -> Row {
        Row {
            what: what.into(),
            figure: Some(figure),
            unit: unit.into(),
            reference: "-".into(),
            ratio: None,
            target: Target::None,
            skipped: None,
        }
    }

    /// Sets the reference text.
    pub fn reference(mut self, text: impl Into<String>) -> Row {
        self.reference = text.into();
        self
    }

    /// Sets the ratio (figure / reference value) and its target.
    pub fn ratio(mut self, reference_value: f64, at_least: f64) -> Row {
        self.ratio = self
            .figure
            .filter(|_| reference_value > 0.0)
            .map(|f| f / reference_value);
        self.target = Target::RatioAtLeast(at_least);
        self
    }

    /// Sets a target on the figure itself.
    pub fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }

    /// A row whose step did not run or failed.
    pub fn skipped(what: &str, unit: &str, target: Target, why: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            figure: None,
            unit: unit.into(),
            reference: "-".into(),
            ratio: None,
            target,
            skipped: Some(why.into()),
        }
    }

    /// PASS, MISS, SKIP or "-" (no target).
    pub fn verdict(&self) -> &'static str {
        let Some(figure) = self.figure else {
            return "SKIP";
        };
        let ok = match self.target {
            Target::None => return "-",
            Target::RatioAtLeast(x) => match self.ratio {
                Some(r) => r >= x,
                None => return "SKIP",
            },
            Target::Below(x) => figure < x,
            Target::AtLeast(x) => figure >= x,
        };
        if ok {
            "PASS"
        } else {
            "MISS"
        }
    }

    /// True if the row has a target and missed it.
    pub fn missed(&self) -> bool {
        self.verdict() == "MISS"
    }
}

fn target_text(t: Target) -> String {
    match t {
        Target::None => "-".into(),
        Target::RatioAtLeast(x) => format!("ratio >= {x}"),
        Target::Below(x) => format!("< {}", num(x)),
        Target::AtLeast(x) => format!(">= {}", num(x)),
    }
}

/// A figure with sensible precision.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || (a >= 100.0 && x.fract() == 0.0) {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Renders the rows as an aligned text table.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "what",
        "figure",
        "unit",
        "reference",
        "ratio",
        "target",
        "verdict",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.figure.map_or_else(|| "-".into(), num),
                r.unit.clone(),
                r.reference.clone(),
                r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                target_text(r.target),
                r.verdict().into(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[&str]| {
        for (i, (s, w)) in c.iter().zip(width.iter()).enumerate() {
            // Numbers right-aligned, text left-aligned.
            if i == 1 || i == 4 {
                let _ = write!(out, "{s:>w$}");
            } else {
                let _ = write!(out, "{s:<w$}");
            }
            out.push_str(if i + 1 < c.len() { "  " } else { "\n" });
        }
    };
    line(&mut out, &header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for c in &cells {
        line(&mut out, &c.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_targets() {
        let r = Row::info("x", 3.0, "MB/s").ratio(1.0, 2.0);
        assert_eq!(r.verdict(), "PASS");
        let r = Row::info("x", 1.0, "MB/s").ratio(1.0, 2.0);
        assert!(r.missed());
        let r = Row::info("x", 20.0, "KiB").target(Target::Below(16.0));
        assert_eq!(r.verdict(), "MISS");
        assert_eq!(Row::info("x", 1.0, "u").verdict(), "-");
        assert_eq!(
            Row::skipped("x", "u", Target::Below(1.0), "no").verdict(),
            "SKIP"
        );
    }

    #[test]
    fn table_is_aligned() {
        let t = render(&[
            Row::info("a", 1.5, "s"),
            Row::info("longer row", 1234.0, "MB/s"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
