//! Plain-text tables that fit a terminal: columns take what they need; when the total is wider
//! than the limit, the widest shrinkable columns are cut and end in '…'.

pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Columns that may be cut (by index); the others keep their width.
    pub shrinkable: Vec<usize>,
}

const GAP: usize = 2;
/// A cut column keeps at least this many characters.
const MIN: usize = 6;

fn width(s: &str) -> usize {
    s.chars().count()
}

fn cut(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table {
            headers,
            rows: Vec::new(),
            shrinkable: Vec::new(),
        }
    }

    pub fn shrink(mut self, cols: &[usize]) -> Self {
        self.shrinkable = cols.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        // Control characters would break the layout (and could move a terminal's cursor).
        self.rows.push(
            cells
                .into_iter()
                .map(|c| {
                    c.chars()
                        .map(|ch| if ch.is_control() { ' ' } else { ch })
                        .collect()
                })
                .collect(),
        );
    }

    /// The table, each line at most `max` characters (`None`: no limit).
    pub fn render(&self, max: Option<usize>) -> String {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(width(c));
            }
        }
        if let Some(max) = max {
            let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * (n.saturating_sub(1));
            while total(&w) > max {
                // Cut the widest shrinkable column by one.
                let Some(i) = self
                    .shrinkable
                    .iter()
                    .copied()
                    .filter(|&i| i < n && w[i] > MIN.max(width(self.headers[i])))
                    .max_by_key(|&i| w[i])
                else {
                    break;
                };
                w[i] -= 1;
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<String>, out: &mut String| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                let c = cut(c, w[i]);
                if i + 1 == n {
                    s.push_str(&c);
                } else {
                    s.push_str(&c);
                    s.push_str(&" ".repeat(w[i] - width(&c) + GAP));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(
            self.headers.iter().map(|h| h.to_string()).collect(),
            &mut out,
        );
        for r in &self.rows {
            line(r.clone(), &mut out);
        }
        out
    }
}

/// "42s", "5m", "3h", "2d" since `t` (unix seconds).
pub fn age(t: Option<u64>, now: u64) -> String {
    let Some(t) = t else { return "-".into() };
    let d = now.saturating_sub(t);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_and_cuts() {
        let mut t = Table::new(vec!["NAME", "POOLS", "USED"]).shrink(&[1]);
        t.row(vec!["net".into(), "x".repeat(200), "3".into()]);
        let s = t.render(Some(80));
        for l in s.lines() {
            assert!(width(l) <= 80, "{l}");
        }
        assert!(s.contains('…'));
        let s = t.render(None);
        assert!(s.lines().nth(1).unwrap().len() > 200);
    }
}
