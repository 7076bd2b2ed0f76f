//! Charts of a `scimsync load` run, written as self-contained SVG text (no
//! scripts, fonts or links; a white background, so they read the same on a
//! dark page): `throughput.svg`, user creates per second and create latency
//! against concurrency, one point per level of a sweep; and `latency.svg`,
//! the create-user and filter-user latency distributions at the highest
//! concurrency, as a percentile plot whose x axis spreads the tail.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::stats::{DISTRIBUTION_DEPTH, Level, OpReport, Quantile, Report};

/// File names in the chart directory.
pub const THROUGHPUT_FILE: &str = "throughput.svg";
pub const LATENCY_FILE: &str = "latency.svg";

/// What the titles say about the run; the backend is not known to the
/// client, so it is not among them.
#[derive(Debug, Clone)]
pub struct Caption {
    pub users_per_level: usize,
    /// Concurrency levels, in the order run.
    pub levels: Vec<usize>,
    pub seed: u64,
    /// When the run started.
    pub date: chrono::DateTime<chrono::Utc>,
}

impl Caption {
    pub fn of(report: &Report, date: chrono::DateTime<chrono::Utc>) -> Caption {
        let levels = if report.setup.concurrency_sweep.is_empty() {
            vec![report.setup.concurrency]
        } else {
            report.setup.concurrency_sweep.clone()
        };
        Caption {
            users_per_level: report.sweep.first().map_or(report.setup.users, |l| l.users),
            levels,
            seed: report.setup.seed,
            date,
        }
    }

    fn line(&self) -> String {
        let levels: Vec<String> = self.levels.iter().map(ToString::to_string).collect();
        format!(
            "{} users{} · concurrency {} · seed {} · {}",
            self.users_per_level,
            if levels.len() > 1 { " per level" } else { "" },
            levels.join(", "),
            self.seed,
            self.date.format("%Y-%m-%d %H:%M UTC")
        )
    }
}

/// Writes both charts of `report` into `dir` and returns their paths.
pub fn write(
    dir: &Path,
    report: &Report,
    date: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<PathBuf>> {
    let caption = Caption::of(report, date);
    let charts = [
        (THROUGHPUT_FILE, throughput_svg(&report.sweep, &caption)),
        (LATENCY_FILE, latency_chart(report, &caption)),
    ];
    let mut paths = Vec::with_capacity(charts.len());
    for (name, svg) in charts {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// The latency chart of the level with the highest concurrency (the last
/// such, should one repeat), or of the whole run when there are no levels.
fn latency_chart(report: &Report, caption: &Caption) -> String {
    let top = report
        .sweep
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (l.concurrency, *i))
        .map(|(_, l)| l);
    match top {
        Some(level) => latency_svg(
            level.concurrency,
            level.create_user.as_ref(),
            level.filter_user.as_ref(),
            caption,
        ),
        None => {
            let find = |name: &str| report.operations.iter().find(|o| o.operation == name);
            latency_svg(
                report.setup.concurrency,
                find("create-user"),
                find("filter-user"),
                caption,
            )
        }
    }
}

const BLUE: &str = "#1f77b4";
const ORANGE: &str = "#e6550d";
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";
const GRID: &str = "#e3e3e3";
const INK: &str = "#222222";
const MUTED: &str = "#555555";

/// The throughput chart's size and panels: creates/s above, latency below,
/// sharing the concurrency axis; the legends in a column on the right.
const T_WIDTH: f64 = 900.0;
const T_HEIGHT: f64 = 700.0;
const T_RATE: Area = Area {
    left: 90.0,
    right: 680.0,
    top: 90.0,
    bottom: 330.0,
};
const T_LATENCY: Area = Area {
    left: 90.0,
    right: 680.0,
    top: 395.0,
    bottom: 635.0,
};
/// The first and last concurrency sit this far inside a panel's sides.
const X_INSET: f64 = 30.0;
/// Room above the highest throughput point for its label.
const HEADROOM: f64 = 1.08;

/// The latency chart's size and its one panel.
const L_WIDTH: f64 = 900.0;
const L_HEIGHT: f64 = 560.0;
const L_AREA: Area = Area {
    left: 90.0,
    right: 680.0,
    top: 80.0,
    bottom: 480.0,
};
/// Percentiles labelled on the latency chart's x axis.
const PERCENTILE_TICKS: [(f64, &str); 8] = [
    (0.0, "0"),
    (0.5, "50"),
    (0.75, "75"),
    (0.9, "90"),
    (0.95, "95"),
    (0.99, "99"),
    (0.995, "99.5"),
    (DISTRIBUTION_DEPTH, "99.9"),
];

/// A rectangle of the drawing, in pixels.
#[derive(Debug, Clone, Copy)]
struct Area {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

/// Maps values in `lo..=hi` (on a log10 scale when `log`) to pixels
/// `from..=to`; a range of one value maps to the middle.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Scale {
    fn px(&self, v: f64) -> f64 {
        let f = |v: f64| {
            if self.log {
                v.max(f64::MIN_POSITIVE).log10()
            } else {
                v
            }
        };
        let (a, b) = (f(self.lo), f(self.hi));
        let t = if b > a && v.is_finite() {
            (f(v) - a) / (b - a)
        } else {
            0.5
        };
        self.from + t * (self.to - self.from)
    }
}

/// A tick: where, and what it says.
#[derive(Debug, Clone)]
struct Tick {
    value: f64,
    label: String,
}

/// 0 to a round number at or above `max`, in 4-10 round steps.
fn linear_ticks(max: f64) -> (f64, Vec<Tick>) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = magnitude
        * match rough / magnitude {
            n if n <= 1.0 => 1.0,
            n if n <= 2.0 => 2.0,
            n if n <= 5.0 => 5.0,
            _ => 10.0,
        };
    let steps = (max / step - 1e-9).ceil().max(1.0) as usize;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let ticks = (0..=steps)
        .map(|i| {
            let value = i as f64 * step;
            Tick {
                value,
                label: format!("{value:.decimals$}"),
            }
        })
        .collect();
    (steps as f64 * step, ticks)
}

/// The values 1, 2, 5 × 10^k around `lo..=hi`, ascending.
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32 - 1;
    let last = hi.log10().ceil() as i32 + 1;
    (first..=last)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .collect()
}

/// A log axis for latencies in ms: from the 1-2-5 value at or below `min`
/// to the one at or above `max` (at least one step apart), ticks at each
/// 1-2-5 value, labelled for up to three decades and only at powers of ten
/// (and the ends) beyond.
/// Values below 1 µs, the resolution of the measurements, count as 1 µs.
fn log_ticks(min: f64, max: f64) -> (f64, f64, Vec<Tick>) {
    let min = if min.is_finite() {
        min.max(0.001)
    } else {
        0.001
    };
    let max = if max.is_finite() { max.max(min) } else { min };
    let candidates = one_two_five(min, max);
    let lo = candidates
        .iter()
        .copied()
        .rfind(|&v| v <= min * (1.0 + 1e-9))
        .unwrap_or(min);
    let mut hi = candidates
        .iter()
        .copied()
        .find(|&v| v >= max * (1.0 - 1e-9))
        .unwrap_or(max);
    if hi <= lo * (1.0 + 1e-9) {
        hi = candidates
            .iter()
            .copied()
            .find(|&v| v > lo * (1.0 + 1e-9))
            .unwrap_or(lo * 10.0);
    }
    let dense = (hi / lo).log10() <= 3.0 + 1e-9;
    let ticks = candidates
        .into_iter()
        .filter(|&v| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9))
        .map(|value| {
            let power = (value.log10() - value.log10().round()).abs() < 1e-9;
            let labelled = dense || power || value == lo || value == hi;
            Tick {
                value,
                label: if labelled {
                    number(value)
                } else {
                    String::new()
                },
            }
        })
        .collect();
    (lo, hi, ticks)
}

/// A number with up to three decimals and no trailing zeros.
fn number(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// A coordinate, as written into the SVG: one decimal, never NaN.
fn c(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "0.0".to_owned()
    }
}

/// Text content or an attribute value, escaped for XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            ch => out.push(ch),
        }
    }
    out
}

/// Milliseconds from microseconds.
fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// An SVG document being written.
struct Svg {
    out: String,
}

impl Svg {
    fn new(width: f64, height: f64, title: &str) -> Svg {
        let mut out = String::with_capacity(16 * 1024);
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12" fill="{INK}">"#,
            w = c(width),
            h = c(height),
        );
        let _ = writeln!(out, "<title>{}</title>", escape(title));
        let _ = writeln!(
            out,
            r#"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"#,
            c(width),
            c(height)
        );
        Svg { out }
    }

    /// Text at (x, y); `anchor` is start, middle or end; `style` holds
    /// further attributes, written as given.
    fn text(&mut self, x: f64, y: f64, anchor: &str, style: &str, content: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{}" y="{}" text-anchor="{anchor}"{}{style}>{}</text>"#,
            c(x),
            c(y),
            if style.is_empty() { "" } else { " " },
            escape(content)
        );
    }

    /// Text turned a quarter left about (x, y), for a y-axis title.
    fn vertical_text(&mut self, x: f64, y: f64, content: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{x}" y="{y}" text-anchor="middle" font-size="13" transform="rotate(-90 {x} {y})">{}</text>"#,
            escape(content),
            x = c(x),
            y = c(y),
        );
    }

    fn line(&mut self, from: (f64, f64), to: (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.out,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="{}"/>"#,
            c(from.0),
            c(from.1),
            c(to.0),
            c(to.1),
            c(width)
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64, dash: Option<&str>) {
        if points.len() < 2 {
            return;
        }
        let at: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{},{}", c(x), c(y)))
            .collect();
        let _ = writeln!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{}" stroke-linejoin="round"{}/>"#,
            at.join(" "),
            c(width),
            dash.map(|d| format!(r#" stroke-dasharray="{d}""#))
                .unwrap_or_default()
        );
    }

    fn circle(&mut self, at: (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            r#"<circle cx="{}" cy="{}" r="{}" fill="{fill}" stroke="white" stroke-width="1"/>"#,
            c(at.0),
            c(at.1),
            c(r)
        );
    }

    fn frame(&mut self, area: Area) {
        let _ = writeln!(
            self.out,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{MUTED}" stroke-width="1"/>"#,
            c(area.left),
            c(area.top),
            c(area.right - area.left),
            c(area.bottom - area.top)
        );
    }

    /// Title and caption line at the top.
    fn heading(&mut self, width: f64, title: &str, caption: &str) {
        self.text(
            width / 2.0,
            30.0,
            "middle",
            r#"font-size="18" font-weight="bold""#,
            title,
        );
        self.text(
            width / 2.0,
            52.0,
            "middle",
            &format!(r#"font-size="12.5" fill="{MUTED}""#),
            caption,
        );
    }

    /// Grid lines, frame, tick labels and the y-axis title of a panel;
    /// x tick labels that would crowd the one before are left out.
    fn axes(&mut self, area: Area, x: (&Scale, &[Tick]), y: (&Scale, &[Tick]), y_title: &str) {
        let (xs, xticks) = x;
        let (ys, yticks) = y;
        for t in yticks {
            let py = ys.px(t.value);
            self.line((area.left, py), (area.right, py), GRID, 1.0);
            if !t.label.is_empty() {
                self.line((area.left - 5.0, py), (area.left, py), MUTED, 1.0);
                self.text(area.left - 8.0, py + 4.0, "end", "", &t.label);
            }
        }
        let mut last_label: Option<f64> = None;
        for t in xticks {
            let px = xs.px(t.value);
            self.line((px, area.top), (px, area.bottom), GRID, 1.0);
            self.line((px, area.bottom), (px, area.bottom + 5.0), MUTED, 1.0);
            if last_label.is_none_or(|l| px - l >= 28.0) {
                self.text(px, area.bottom + 18.0, "middle", "", &t.label);
                last_label = Some(px);
            }
        }
        self.frame(area);
        self.vertical_text(area.left - 55.0, (area.top + area.bottom) / 2.0, y_title);
    }

    /// One legend entry at (x, y): a line sample with a point, the label,
    /// and smaller detail lines below it. Returns where the next goes.
    fn legend(
        &mut self,
        x: f64,
        y: f64,
        color: &str,
        dash: Option<&str>,
        label: &str,
        details: &[String],
    ) -> f64 {
        self.polyline(&[(x, y - 4.0), (x + 26.0, y - 4.0)], color, 2.5, dash);
        self.circle((x + 13.0, y - 4.0), 3.5, color);
        self.text(x + 34.0, y, "start", "", label);
        let mut y = y;
        for d in details {
            y += 15.0;
            self.text(
                x + 34.0,
                y,
                "start",
                &format!(r#"font-size="11" fill="{MUTED}""#),
                d,
            );
        }
        y + 26.0
    }

    fn no_data(&mut self, area: Area, what: &str) {
        self.text(
            (area.left + area.right) / 2.0,
            (area.top + area.bottom) / 2.0,
            "middle",
            &format!(r#"font-size="14" fill="{MUTED}""#),
            what,
        );
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// The concurrency axis: a log scale (the levels are usually doubled each
/// time), the lowest and highest level [`X_INSET`] inside the panel, one
/// tick per level.
fn concurrency_axis(levels: &[usize], area: Area) -> (Scale, Vec<Tick>) {
    let mut values: Vec<usize> = levels.to_vec();
    values.sort_unstable();
    values.dedup();
    let lo = values.first().copied().unwrap_or(1).max(1) as f64;
    let hi = values.last().copied().unwrap_or(1).max(1) as f64;
    let scale = Scale {
        lo,
        hi,
        log: true,
        from: area.left + X_INSET,
        to: area.right - X_INSET,
    };
    let ticks = values
        .into_iter()
        .map(|v| Tick {
            value: v as f64,
            label: v.to_string(),
        })
        .collect();
    (scale, ticks)
}

/// `throughput.svg`: POST /Users per second against concurrency above,
/// create p50 and p99 below. Levels are drawn in concurrency order,
/// whatever order they ran in.
pub fn throughput_svg(levels: &[Level], caption: &Caption) -> String {
    let mut sorted: Vec<&Level> = levels.iter().collect();
    sorted.sort_by_key(|l| l.concurrency);
    let concurrencies: Vec<usize> = sorted.iter().map(|l| l.concurrency).collect();
    let title = "scimsync load: user creates against concurrency";
    let mut svg = Svg::new(T_WIDTH, T_HEIGHT, title);
    svg.heading(T_WIDTH, title, &caption.line());

    // Creates per second.
    let rates: Vec<(usize, f64)> = sorted
        .iter()
        .filter_map(|l| Some((l.concurrency, l.creates_per_sec()?)))
        .collect();
    let (x, xticks) = concurrency_axis(&concurrencies, T_RATE);
    let max_rate = rates.iter().map(|&(_, r)| r).fold(0.0, f64::max);
    let (top, yticks) = linear_ticks(max_rate * HEADROOM);
    let y = Scale {
        lo: 0.0,
        hi: top,
        log: false,
        from: T_RATE.bottom,
        to: T_RATE.top,
    };
    svg.text(
        T_RATE.left,
        T_RATE.top - 9.0,
        "start",
        r#"font-size="13" font-weight="bold""#,
        "Throughput",
    );
    svg.axes(
        T_RATE,
        (&x, &xticks),
        (&y, &yticks),
        "POST /Users per second",
    );
    let points: Vec<(f64, f64)> = rates
        .iter()
        .map(|&(conc, r)| (x.px(conc as f64), y.px(r)))
        .collect();
    svg.polyline(&points, BLUE, 2.5, None);
    for (&(px, py), &(_, r)) in points.iter().zip(&rates) {
        svg.circle((px, py), 4.5, BLUE);
        svg.text(
            px,
            py - 10.0,
            "middle",
            &format!(r#"font-size="11" fill="{BLUE}""#),
            &format!("{r:.0}"),
        );
    }
    if points.is_empty() {
        svg.no_data(T_RATE, "no create-user requests measured");
    }
    let legend_x = T_RATE.right + 18.0;
    svg.legend(
        legend_x,
        T_RATE.top + 14.0,
        BLUE,
        None,
        "creates/s",
        &[
            "POST /Users answered per".to_owned(),
            "second, each after a GET".to_owned(),
            "filter=userName eq".to_owned(),
        ],
    );

    // Create latency.
    let latencies: Vec<(usize, f64, f64)> = sorted
        .iter()
        .filter_map(|l| {
            let lat = l.create_user.as_ref()?.latency_us?;
            Some((l.concurrency, ms(lat.p50), ms(lat.p99)))
        })
        .collect();
    let (x, xticks) = concurrency_axis(&concurrencies, T_LATENCY);
    let max_ms = latencies.iter().map(|&(_, _, p99)| p99).fold(0.0, f64::max);
    let (top, yticks) = linear_ticks(max_ms * HEADROOM);
    let y = Scale {
        lo: 0.0,
        hi: top,
        log: false,
        from: T_LATENCY.bottom,
        to: T_LATENCY.top,
    };
    svg.text(
        T_LATENCY.left,
        T_LATENCY.top - 9.0,
        "start",
        r#"font-size="13" font-weight="bold""#,
        "POST /Users latency",
    );
    svg.axes(T_LATENCY, (&x, &xticks), (&y, &yticks), "latency (ms)");
    svg.text(
        (T_LATENCY.left + T_LATENCY.right) / 2.0,
        T_LATENCY.bottom + 42.0,
        "middle",
        r#"font-size="13""#,
        "concurrency (requests in flight; log scale)",
    );
    for (median, color, dash) in [(true, GREEN, None), (false, RED, Some("7 4"))] {
        let points: Vec<(f64, f64)> = latencies
            .iter()
            .map(|&(conc, p50, p99)| (x.px(conc as f64), y.px(if median { p50 } else { p99 })))
            .collect();
        svg.polyline(&points, color, 2.5, dash);
        for &p in &points {
            svg.circle(p, 4.5, color);
        }
    }
    if latencies.is_empty() {
        svg.no_data(T_LATENCY, "no create-user latencies measured");
    }
    let next = svg.legend(
        legend_x,
        T_LATENCY.top + 14.0,
        RED,
        Some("7 4"),
        "p99",
        &["99 % answered within".to_owned()],
    );
    svg.legend(
        legend_x,
        next,
        GREEN,
        None,
        "p50 (median)",
        &["half answered within".to_owned()],
    );
    svg.finish()
}

/// x of a quantile on the latency chart: log10(1/(1-q)), 0 for the
/// minimum and 3 for p99.9.
fn tail_x(q: f64) -> f64 {
    -(1.0 - q.clamp(0.0, DISTRIBUTION_DEPTH)).log10()
}

/// `latency.svg`: the create-user and filter-user latency percentiles,
/// 0 to 99.9, at one concurrency; y in ms on a log scale so that the fast
/// lookups and the slower creates both show their shape.
pub fn latency_svg(
    concurrency: usize,
    create: Option<&OpReport>,
    filter: Option<&OpReport>,
    caption: &Caption,
) -> String {
    let title = format!("scimsync load: latency distribution at concurrency {concurrency}");
    let mut svg = Svg::new(L_WIDTH, L_HEIGHT, &title);
    svg.heading(L_WIDTH, &title, &caption.line());
    let series: Vec<(&OpReport, &str, Option<&str>, &str)> = [
        (create, BLUE, None, "POST /Users (create-user)"),
        (filter, ORANGE, Some("7 4"), "GET filter=userName eq"),
    ]
    .into_iter()
    .filter_map(|(o, color, dash, label)| Some((o?, color, dash, label)))
    .filter(|(o, ..)| !o.distribution.is_empty())
    .collect();
    let all = || {
        series
            .iter()
            .flat_map(|(o, ..)| o.distribution.iter().map(|q| ms(q.us)))
    };
    let (lo, hi, yticks) = log_ticks(
        all().fold(f64::INFINITY, f64::min),
        all().fold(0.0, f64::max),
    );
    let y = Scale {
        lo,
        hi,
        log: true,
        from: L_AREA.bottom,
        to: L_AREA.top,
    };
    let x = Scale {
        lo: 0.0,
        hi: tail_x(DISTRIBUTION_DEPTH),
        log: false,
        from: L_AREA.left,
        to: L_AREA.right,
    };
    let xticks: Vec<Tick> = PERCENTILE_TICKS
        .iter()
        .map(|&(q, label)| Tick {
            value: tail_x(q),
            label: label.to_owned(),
        })
        .collect();
    svg.axes(
        L_AREA,
        (&x, &xticks),
        (&y, &yticks),
        "latency (ms; log scale)",
    );
    svg.text(
        (L_AREA.left + L_AREA.right) / 2.0,
        L_AREA.bottom + 42.0,
        "middle",
        r#"font-size="13""#,
        "percentile (log scale of 1/(1 − p), to spread the tail)",
    );
    let mut legend_y = L_AREA.top + 14.0;
    for (o, color, dash, label) in &series {
        let points: Vec<(f64, f64)> = o
            .distribution
            .iter()
            .map(|&Quantile { q, us }| (x.px(tail_x(q)), y.px(ms(us).max(0.001))))
            .collect();
        svg.polyline(&points, color, 2.5, *dash);
        // Points at p50, p99 and p99.9, as the reports' tables give them.
        for mark in [0.5, 0.99, DISTRIBUTION_DEPTH] {
            if let Some(q) = o.distribution.iter().find(|q| (q.q - mark).abs() < 1e-9) {
                svg.circle((x.px(tail_x(q.q)), y.px(ms(q.us).max(0.001))), 4.0, color);
            }
        }
        let mut details = vec![format!("{}, n = {}", o.operation, o.count)];
        if let Some(l) = o.latency_us {
            details.push(format!(
                "p50 {} · p99 {} ms",
                number_ms(l.p50),
                number_ms(l.p99)
            ));
            details.push(format!("max {} ms", number_ms(l.max)));
        }
        legend_y = svg.legend(L_AREA.right + 18.0, legend_y, color, *dash, label, &details);
    }
    if series.is_empty() {
        svg.no_data(L_AREA, "no latencies measured");
    } else {
        svg.text(
            L_AREA.right + 18.0,
            legend_y,
            "start",
            &format!(r#"font-size="11" fill="{MUTED}""#),
            "dots: p50, p99 and p99.9",
        );
    }
    svg.finish()
}

/// Milliseconds, with two decimals below 10 and one above.
fn number_ms(us: u32) -> String {
    let v = ms(us);
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{Latency, distribution};
    use std::collections::BTreeMap;

    fn caption(levels: &[usize]) -> Caption {
        Caption {
            users_per_level: 1000,
            levels: levels.to_vec(),
            seed: 42,
            date: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a date"),
        }
    }

    fn op(name: &'static str, rate: Option<f64>, mut us: Vec<u32>) -> OpReport {
        let latency_us = Latency::of(&mut us);
        OpReport {
            operation: name,
            count: us.len() as u64,
            ok: us.len() as u64,
            requests_per_sec: rate,
            latency_us,
            errors: BTreeMap::new(),
            throttled: 0,
            last_end_secs: None,
            write: name == "create-user",
            distribution: distribution(&us),
        }
    }

    fn level(concurrency: usize, rate: f64, create_us: Vec<u32>) -> Level {
        Level {
            concurrency,
            first_user: 0,
            users: create_us.len(),
            secs: 1.0,
            users_per_sec: Some(rate),
            filter_user: Some(op("filter-user", Some(rate), vec![500; create_us.len()])),
            create_user: Some(op("create-user", Some(rate), create_us)),
            cpu: None,
        }
    }

    /// Every tag closed in order, nothing outside the root element, no
    /// NaN or infinity anywhere.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        for bad in ["NaN", "inf", "undefined"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        let mut closed_root = false;
        while let Some(start) = rest.find('<') {
            assert!(!closed_root, "content after the root element");
            let end = rest[start..].find('>').expect("tag ends") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside a tag: {tag}");
            let text_before = &rest[..start];
            assert!(!text_before.contains('>'), "stray > in {text_before}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name.trim()), "closing {name}");
                closed_root = open.is_empty();
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("a tag name");
                open.push(name);
            } else {
                assert!(!open.is_empty(), "element outside the root: {tag}");
            }
            // Attribute quotes come in pairs.
            assert_eq!(tag.matches('"').count() % 2, 0, "quotes in {tag}");
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "left open: {open:?}");
        assert!(closed_root);
    }

    #[test]
    fn throughput_points_are_where_their_values_say() {
        let levels = [
            level(4, 200.0, vec![20_000, 40_000]),
            level(1, 100.0, vec![2_000, 4_000]),
        ];
        let svg = throughput_svg(&levels, &caption(&[4, 1]));
        assert_well_formed(&svg);
        // x: concurrency 1 and 4 sit X_INSET inside the panel's sides.
        // y: 200 × 1.08 rounds up to an axis of 0..250 in steps of 50, so
        // 100/s is 100/250 of the 240 px panel above its bottom at 330.
        assert_eq!(
            (T_RATE.left + X_INSET, T_RATE.right - X_INSET),
            (120.0, 650.0)
        );
        assert!(svg.contains(r#"cx="120.0" cy="234.0""#), "{svg}");
        assert!(svg.contains(r#"cx="650.0" cy="138.0""#), "{svg}");
        assert!(svg.contains(r#"points="120.0,234.0 650.0,138.0""#), "{svg}");
        for label in ["0", "50", "100", "150", "200", "250"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        // Latency panel: p99 of 40 ms at 4, p50 of 2 ms at 1, on 0..50 ms
        // (40 × 1.08 = 43.2 rounds up to 50).
        let y = |v: f64| T_LATENCY.bottom - v / 50.0 * (T_LATENCY.bottom - T_LATENCY.top);
        assert!(
            svg.contains(&format!(r#"cx="650.0" cy="{}""#, c(y(40.0)))),
            "{svg}"
        );
        assert!(
            svg.contains(&format!(r#"cx="120.0" cy="{}""#, c(y(2.0)))),
            "{svg}"
        );
        // Labels: axes with units, ticks, legend, and the run's parameters.
        for text in [
            "POST /Users per second",
            "latency (ms)",
            "concurrency (requests in flight; log scale)",
            ">1</text>",
            ">4</text>",
            ">p99</text>",
            ">p50 (median)</text>",
            ">creates/s</text>",
            "1000 users per level · concurrency 4, 1 · seed 42 · 2023-11-14 22:13 UTC",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn one_level_and_zero_latencies_draw_without_nan() {
        let svg = throughput_svg(&[level(16, 0.0, vec![0, 0, 0])], &caption(&[16]));
        assert_well_formed(&svg);
        // One level: in the middle of the panel; a rate of 0 on the bottom.
        let middle = c((T_RATE.left + T_RATE.right) / 2.0);
        assert!(
            svg.contains(&format!(r#"cx="{middle}" cy="330.0""#)),
            "{svg}"
        );
        assert!(svg.contains(">1000 users · concurrency 16 · seed 42 · "));
        let empty = throughput_svg(&[], &caption(&[16]));
        assert_well_formed(&empty);
        assert!(empty.contains("no create-user requests measured"));

        let zero = op("create-user", Some(1.0), vec![0; 5]);
        let svg = latency_svg(16, Some(&zero), None, &caption(&[16]));
        assert_well_formed(&svg);
        assert!(svg.contains("<polyline"));
        let nothing = latency_svg(16, None, None, &caption(&[16]));
        assert_well_formed(&nothing);
        assert!(nothing.contains("no latencies measured"));
        let one = op("filter-user", None, vec![1234]);
        assert_well_formed(&latency_svg(1, None, Some(&one), &caption(&[1])));
    }

    #[test]
    fn latency_chart_spreads_the_tail_and_labels_its_axes() {
        // 1,000 samples of 1..=1000 ms: p50 500 ms, p99 990 ms, p99.9 999 ms.
        let create = op(
            "create-user",
            Some(10.0),
            (1..=1000).map(|ms| ms * 1000).collect(),
        );
        let filter = op("filter-user", Some(10.0), vec![300; 1000]);
        let svg = latency_svg(32, Some(&create), Some(&filter), &caption(&[8, 32]));
        assert_well_formed(&svg);
        // y: 0.3 ms to 999 ms spans 0.2..1000 on a log axis, ticks at
        // powers of ten beyond three decades.
        for label in [
            ">0.2</text>",
            ">1</text>",
            ">10</text>",
            ">100</text>",
            ">1000</text>",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // 2 and 5 × 10^k: grid lines without labels.
        for minor in ["0.5", "2", "5", "20", "50", "200", "500"] {
            let label = format!(r#"text-anchor="end">{minor}</text>"#);
            assert!(!svg.contains(&label), "{label}");
        }
        assert!(svg.contains(r#"text-anchor="end">100</text>"#));
        // x: p50 at log10(2)/3 of the panel, p99 at 2/3, p99.9 at its end.
        let x = |t: f64| L_AREA.left + t / 3.0 * (L_AREA.right - L_AREA.left);
        let y = |ms: f64| {
            let (a, b) = (0.2f64.log10(), 1000f64.log10());
            L_AREA.bottom - (ms.log10() - a) / (b - a) * (L_AREA.bottom - L_AREA.top)
        };
        for (t, value) in [(2f64.log10(), 500.0), (2.0, 990.0), (3.0, 999.0)] {
            let at = format!(r#"cx="{}" cy="{}""#, c(x(t)), c(y(value)));
            assert!(svg.contains(&at), "{at} in {svg}");
        }
        for text in [
            "latency distribution at concurrency 32",
            "latency (ms; log scale)",
            "percentile (log scale of 1/(1 − p), to spread the tail)",
            ">99.9</text>",
            ">POST /Users (create-user)</text>",
            ">GET filter=userName eq</text>",
            "p50 500.0 · p99 990.0",
            "max 1000.0 ms",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_values() {
        let (top, ticks) = linear_ticks(216.0);
        assert_eq!(top, 250.0);
        assert_eq!(ticks.len(), 6);
        let (top, ticks) = linear_ticks(0.0);
        assert_eq!(top, 1.0);
        assert_eq!(ticks.last().map(|t| t.label.as_str()), Some("1.0"));
        let (top, _) = linear_ticks(0.3);
        assert!((top - 0.3).abs() < 1e-9, "{top}");
        let (lo, hi, ticks) = log_ticks(0.0, 0.0);
        assert!(lo > 0.0 && hi > lo, "{lo} {hi}");
        assert!(!ticks.is_empty());
        let (lo, hi, _) = log_ticks(2.5, 62.0);
        assert_eq!((lo, hi), (2.0, 100.0));
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(20.0), "20");
        assert_eq!(number(0.0), "0");
        assert_eq!(escape(r#"a<b & "c""#), "a&lt;b &amp; &quot;c&quot;");
    }
}
